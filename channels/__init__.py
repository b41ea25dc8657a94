"""Channel plug-ins: one class per channel, named by dotted path in `[channels.<name>] backend`."""
