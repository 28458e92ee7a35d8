"""Destinations: how stored events become what a receiver takes.

Receives a batch of stored events (their exact ingested bytes) and a
forwarder's options; hands on a request to send and, once sent, the answer
classified as delivered, retry or dead letter. One package per destination
kind (``webhook``); ``options`` holds what every destination shares (retry,
batching). The delivery loop is written once, above this stage.
"""
