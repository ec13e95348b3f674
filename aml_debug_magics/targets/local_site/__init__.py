"""The folder the local target puts first on an SDK v1 step's ``PYTHONPATH``: it holds only
``sitecustomize.py``, which gives the step its run context (see ``targets/local_run.py``)."""
