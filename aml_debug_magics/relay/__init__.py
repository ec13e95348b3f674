"""The notebook's end of the storage relay (``--via storage``): the debugger's bytes to and from
a node through blobs in the workspace's default datastore, where no network path reaches it.

In: the request's ``--via`` and the workspace's storage account, before the submit; each
followed step's announcement, after. Out: the variables a relayed node reads (its blobs' URLs,
signed for it), and a ``127.0.0.1`` port per relayed step that a debugger attaches to. One
module a job: ``paths.py`` chooses which way each step is reached and runs its relay,
``blobs.py`` makes, signs and deletes the blobs, ``end.py`` is the local port pumped through
them. The node's end is ``node/relay.py``; the wire both ends share is ``node/relay_wire.py``.
"""
