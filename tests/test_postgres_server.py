"""The PostgreSQL tests' server: `.ci/run` starts it and says where (QUEUECTL_TEST_POSTGRES), so in
CI a PostgreSQL test fails when the server is absent instead of skipping. Elsewhere it skips with
the reason. The PostgreSQL store's own tests (the issue "The queue in PostgreSQL") use the same."""

from __future__ import annotations

from conftest import POSTGRES_URL, needs, postgres_reachable


@needs(postgres_reachable(), f"no PostgreSQL server answers at {POSTGRES_URL} (set QUEUECTL_TEST_POSTGRES)")
def test_the_postgresql_server_for_the_tests_answers() -> None:
    assert postgres_reachable(), f"no PostgreSQL server answers at {POSTGRES_URL}"
