"""The instance agent: one runtime process's seat in the fabric (registration under a lease,
record publishing, ordered model record writes, making room by LRU).
"""
