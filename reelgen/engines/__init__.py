"""Generation engines: turn a planned ``Job`` into frames and audio."""
