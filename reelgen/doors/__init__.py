"""The doors beside ``/api/v1``: the MCP server for AI agents (``reelgen mcp`` on stdio, ``/mcp``
streamable HTTP on ``reelgen serve``). Thin: every rule is the service's (see ``reelgen.service``);
the ``/v1/videos`` routes live with the other routes in ``reelgen.api.openai_routes``."""
