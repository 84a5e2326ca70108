"""Bytes in, bytes out: message frames, serializers, stable key hashing and the pickling of code.

No sockets here; ``runtime`` and ``launch`` send and receive what these modules make.
"""
