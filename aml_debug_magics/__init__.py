"""Debug Azure ML pipeline steps, runs and scoring scripts from a notebook, with one magic.

Importing this package is cheap: nothing heavy (azureml, ipywidgets, debugpy) loads until a magic
needs it.
"""

__version__ = "0.1.0"
