"""Prefect flows: orchestration only; the work stays in tasks/."""
