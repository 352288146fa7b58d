"""Making the fabric do things: the cache-miss loader (claim, load, wait), the leader-elected
background controller, and the client of runtimes' model-runtime SPI.
"""
