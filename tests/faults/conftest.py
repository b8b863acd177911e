"""Fixtures of the fault-injection tests (their code lives in fault_infra.py)."""

from tests.faults.fault_infra import home, pg_engine, private_pg, private_redis

__all__ = ["home", "pg_engine", "private_pg", "private_redis"]
