"""``python serve.py AZMLINFSRV-ARGS``: the Azure ML inference server, bound to 127.0.0.1.

The server binds every interface and has no flag to change it; on a laptop or a compute
instance a scoring script under a debugger must not be reachable from the network. Each worker
the server forks starts its debugger at once (``worker_debugger.py``), while it imports the server.
"""

import sys

from azureml_inference_server_http import amlserver

from aml_debug_magics.node import worker_debugger

worker_debugger.start_in_each_worker()

amlserver.DEFAULT_HOST = "127.0.0.1"
sys.argv = ["azmlinfsrv", *sys.argv[1:]]
amlserver.run()
