"""Where a debugged script runs: ``local`` (this machine), later ``azureml``."""
