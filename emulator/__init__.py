"""A faithful Bitrix24 portal over HTTP, for tests, benchmarks and the demo.

Start one with ``python -m emulator serve`` or, in tests, ``emulator.testing.run_emulator()``; see
``emulator/README.md`` for the URL layout, auth, limits, faults and the control API.
"""
