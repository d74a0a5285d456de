"""The one door to Faust's and aiokafka's private internals.

Everything here reaches into a library's non-public attributes; ``tests/unit/test_runtime_hooks.py``
names each hook, so an upgrade that removes one fails there with the hook's name, not as a
silent change of behaviour in production.
"""
