"""Running a plan: the run, its workers, retries, the HTTP client and the report."""
