"""The debugger inside the notebook: a DAP client (``dap``), the state it keeps for a view
(``controller``), the text commands (``commands``) and the kernel's reach (``kernel``)."""
