"""``python serve.py AZMLINFSRV-ARGS``: the Azure ML inference server, bound to 127.0.0.1.

The server binds every interface and has no flag to change it; on a laptop or a compute
instance a scoring script under a debugger must not be reachable from the network.
"""

import sys

from azureml_inference_server_http import amlserver

amlserver.DEFAULT_HOST = "127.0.0.1"
sys.argv = ["azmlinfsrv", *sys.argv[1:]]
amlserver.run()
