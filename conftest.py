"""Root conftest: registers the shared fixture modules of tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.model",
    "tests.fixtures.shards",
    "tests.fixtures.sft_data",
    "tests.fixtures.platform",
    "tests.fixtures.backfills",
    "tests.fixtures.webhook",
    "tests.fixtures.skypilot",
]
