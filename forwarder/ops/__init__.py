"""Operations: what operators and Kubernetes talk to.

The admin API (status, history, test button, dead letters) on the ingest
listeners, the CLI's client for it and the operator commands built on it
(``commands``, ``buffer_commands``, the offline ``render``, the live
``top``), the probes and metrics listener, and a debug receiver for trying a
configuration by hand. Sits on top of the other stages and changes none of
them except through their own interfaces.
"""
