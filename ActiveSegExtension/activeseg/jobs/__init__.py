"""Background jobs: the job table, the runner and the worker process."""
