"""
Calling many servers as one: the balancer and its subchannels (one per
endpoint), pickers, the circuit breaker, retries and hedging, resolvers and
etcd discovery.
"""
