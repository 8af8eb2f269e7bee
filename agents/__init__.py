"""WHERE patronage runs: settings, the Faust app, topics and tables, agents, CLI.

Everything that touches Kafka, Redis, Prometheus, the network or the file system lives here;
the business rules it calls live in ``streams``.
"""
