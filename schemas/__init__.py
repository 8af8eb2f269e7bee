"""WHAT flows through patronage: input events, output records, table values.

Data and validation only — no Kafka, Faust, Redis or clock access here.
"""
