"""The read views: how events fold into them, the Redis key space they live in, and how they are read."""
