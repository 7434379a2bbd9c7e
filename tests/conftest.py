"""Shared pytest configuration: fixture plugins for the whole suite, and one thread per process.

The suite runs under pytest-xdist (``make test``): several test processes, each starting worker,
server and rank processes of its own, on a 2-core machine. PyTorch's OpenMP pool defaults to one
thread per core in *every* process, and many such pools on two cores spin against each other (a
module of tiny-engine renders took 4x longer under ``-n 2`` with the default than with one thread).
One thread per process, set here before anything imports torch and inherited by every process a
test starts, leaves the parallelism to the processes. An explicit ``OMP_NUM_THREADS`` wins.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

pytest_plugins = ["tests.store_fixtures", "tests.api_fixtures", "tests.s3_fixtures"]


# --- engine fixtures ---------------------------------------------------------------------------
import pytest  # noqa: E402

from reelgen.engines.base import Engine  # noqa: E402
from reelgen.profiles import Profile  # noqa: E402


@pytest.fixture(scope="session")
def tiny_profile() -> Profile:
    from reelgen.profiles import get_profile

    return get_profile("ltx-2-tiny")


@pytest.fixture(scope="session")
def tiny_engine(tiny_profile: Profile) -> Engine:
    """The ``ltx-2-tiny`` engine on CPU, loaded once for the whole session (load once, generate many)."""
    from reelgen.engines import load_engine

    return load_engine(tiny_profile, device="cpu")


# --- xdist groups ----------------------------------------------------------------------------------
#: Modules whose tests must share one test process under ``--dist loadgroup``: the Ray modules (one
#: local Ray cluster at a time on a 2-core machine; both start their own and would compete for the
#: same two CPUs), and modules whose module-scoped fixture is costly (a ``reelgen serve`` process, an
#: engine, renders shared by every test) and would otherwise be built again in each test process.
XDIST_GROUPS = {
    "tests.test_ray": "ray",
    "tests.test_ray_groups": "ray",
    "tests.test_readme": "readme",
    "tests.test_continuity": "continuity",
    "tests.test_creative": "creative",
}


# --- the quick group ---------------------------------------------------------------------------------
#: Tests that start processes: workers, ``reelgen serve``, the CLI, device-group ranks, S3 stand-ins,
#: schemathesis; besides these, every test using the ``live`` fixture (its worker is a subprocess).
#: Each such process imports torch or the server (5-7 CPU seconds on this machine), which is most of
#: the suite's cost; ``make test-quick`` leaves them out (``-m "not process ..."``) and still reaches
#: every module through the other tests. ``"*"``: every test of the module. Found by recording each
#: test's ``subprocess``/``multiprocessing`` starts during a whole run (docs/testing.md).
PROCESS_TESTS: dict[str, set[str]] = {
    "tests.test_api_extensions": {"test_cancel_a_processing_task_stops_the_worker"},
    "tests.test_cli_user": {"test_generate_tasks_credits_models"},
    "tests.test_client": {"test_generate_wait_download_and_a_failed_task"},
    "tests.test_continuity": {"test_a_device_group_carries_the_frames_on_every_rank"},
    "tests.test_contract": {"test_schemathesis_finds_no_failure"},
    "tests.test_demo": {"*"},
    "tests.test_e2e": {"*"},
    "tests.test_engine_fidelity": {"test_regional_compile_agrees_with_eager"},
    "tests.test_extend": {"test_extend_reads_the_original_from_an_s3_bucket"},
    "tests.test_fair_e2e": {"*"},
    "tests.test_hold_expiry": {"test_reelgen_serve_sweeps_expired_holds_on_its_own"},
    "tests.test_mcp": {"test_stdio_reports_a_server_it_cannot_reach"},
    "tests.test_parallel": {
        "test_a_cancel_on_rank_0_stops_every_rank_at_the_same_step",
        "test_a_killed_rank_ends_the_group_attempt_without_a_hang",
        "test_generate_local_on_two_cpus_equals_one_cpu",
        "test_group_mesh_arithmetic_on_four_processes",
        "test_guidance_rows_on_two_processes_match_one_process",
        "test_ring_attention_needs_a_cuda_backend",
        "test_ulysses_attention_runs_on_gloo_and_matches_one_process",
    },
    "tests.test_parallel_serve": {
        "test_a_killed_rank_ends_the_attempt_and_the_task_is_retried_and_charged_once",
        "test_the_local_executor_runs_a_task_on_a_group",
    },
    "tests.test_readme": {"*"},
    "tests.test_replicas": {"*"},
    "tests.test_s3_e2e": {"*"},
    "tests.test_soak": {"*"},
    "tests.test_storage_s3": {"*"},
    "tests.test_store_ledger": {"test_concurrent_reserves_from_processes_never_overdraw"},
    "tests.test_ulysses": {
        "test_generate_local_ulysses_on_two_cpus_equals_one_cpu",
        "test_gloo_has_all_to_all_single_but_not_an_uneven_all_gather",
        "test_guidance_rows_and_ulysses_on_four_processes_match_one_process",
        "test_one_transformer_call_on_two_processes_matches_one_process",
    },
    "tests.test_uploads": {"test_the_worker_reads_uploads_from_storage"},
    "tests.test_vicsee_compat": {
        "test_a_vicsee_client_and_a_kling_user_work_unchanged",
        "test_kling_fields_are_validated",
        "test_links_that_never_expire_survive_restarts",
    },
    "tests.test_worker": {
        "test_killed_worker_is_recovered_on_a_fresh_worker",
        "test_local_executor_runs_tasks_and_restarts_a_dead_worker",
        "test_poison_task_fails_after_max_attempts",
        "test_second_sigterm_hands_back_at_once",
        "test_sigterm_hands_back_within_grace_and_a_restarted_worker_finishes",
        "test_worker_completes_tasks_and_fails_bad_input_cleanly",
    },
}
#: Tests left out of the inner loop for their cost alone (3 CPU seconds or more each on this machine,
#: measured under ``make test``): stateful and property runs over real databases, professional-mode
#: and multi-image renders. Their modules keep quicker tests in ``make test-quick``.
SLOW_TESTS: dict[str, set[str]] = {
    "tests.test_service_ledger": {"*"},
    "tests.test_http_surface": {"test_no_request_gets_a_5xx"},
    "tests.test_store_ledger": {"test_lifecycle_state_machine_keeps_the_invariants"},
    "tests.test_fuzz_parsers": {"test_generate_parser_on_shaped_bodies", "test_generate_parser_on_any_json_value"},
    "tests.test_engine_fidelity": {
        "test_a_lora_changes_the_output_and_switching_it_off_restores_it_bit_for_bit",
        "test_every_aspect_ratio_of_both_modes_and_both_models_has_the_asked_shape",
        "test_the_distilled_lora_is_what_stage2_runs",
        "test_every_generation_runs_tiny",
    },
    "tests.test_ltx2": {"test_start_and_end_images_both_condition", "test_upsampler_in_its_own_pipeline_directory"},
    "tests.test_acceleration": {"test_the_step_cache_skips_what_its_schedule_says_and_stays_close"},
    "tests.test_generation": {
        "test_professional_two_stage",
        "test_cli_start_and_end_frames_png_and_jpeg",
        "test_durations",
    },
    "tests.test_api_extensions": {"test_fifty_racing_duplicates_make_one_task_and_one_hold"},
    "tests.test_api": {"test_concurrent_submits_never_overdraw"},
}
#: Tests that drive a real browser (Debian's Chromium through Playwright)
BROWSER_TESTS = {"tests.test_playground": {"test_playground_generates_and_plays_a_3_second_video"}}


def _module(item: pytest.Item) -> str:
    return item.module.__name__ if item.module else ""


def _listed(table: dict[str, set[str]], item: pytest.Item) -> bool:
    names = table.get(_module(item), set())
    return "*" in names or item.originalname in names  # type: ignore[attr-defined]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = XDIST_GROUPS.get(_module(item))
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        # ``live``: the app with its local executor, whose worker is a subprocess (tests/api_fixtures.py)
        if _listed(PROCESS_TESTS, item) or "live" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.process)
        if _listed(SLOW_TESTS, item):
            item.add_marker(pytest.mark.slow)
        if _listed(BROWSER_TESTS, item):
            item.add_marker(pytest.mark.browser)
