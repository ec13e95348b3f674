"""Where the steps run: ``local`` (subprocesses here), ``azureml`` (submitted to Azure ML). A
target reports to the session; it never touches a widget. Which one runs a request (a scoring
script's are in ``deploy/``) is ``dispatch.py``'s choice.
"""
