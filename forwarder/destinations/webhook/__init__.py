"""The webhook destination: HTTP requests built from stored bytes, answers classified.

Body formats (JSON, NDJSON, CloudEvents, Splunk HEC, templates), how the
token goes out (``auth``), Standard Webhooks signatures, gzip, TLS and the
private-network guard (``transport``), and ``sending``: the only module that
knows aiohttp's client errors and turns them into our delivery errors.
"""
