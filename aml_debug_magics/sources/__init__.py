"""Readers of what the user built: SDK v1 steps and ScriptRunConfigs (``sdk_v1``), and the data
they read from outside (``inputs``), into the plain records of ``records.py``."""
