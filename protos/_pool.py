"""The private descriptor pool that meshserve's generated messages live in.

tritonclient registers Triton's `inference.*` messages in protobuf's default
pool; ours carry the same full names (that is what makes them wire-compatible),
so registering both in one pool fails with "duplicate symbol". A pool of our
own lets a process hold both: tests that drive our servers with tritonclient,
and any user process that embeds a runtime beside a Triton client.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
