"""What travels to the node: the bootstrap, the gate, the announcement lines and the scoring
entry script.

These files run where the user's script runs, in the user's environment: the standard library and
debugpy only, Python 3.8 or newer. On Azure ML they are copied into the run's snapshot under
their shipped names (``aml_debug_bootstrap.py``...), where this package is not installed; each
imports the others either way. tests/test_layout.py checks both rules.
"""
