"""``trigger-bridge redrive``: dead letters back into flow (docs/operations.md).

- :mod:`~bridge.redrive.letters`: a dead letter read back, and the event it was;
- :mod:`~bridge.redrive.selection`: the filters;
- :mod:`~bridge.redrive.sources`: where letters are read and republished (the file in
  :mod:`~bridge.redrive.files`, Kafka and RabbitMQ in their connectors);
- :mod:`~bridge.redrive.run`: the redrive through the daemon's dispatcher and invoker;
- :mod:`~bridge.redrive.report`: progress and summary; :mod:`~bridge.redrive.command`:
  the command line.
"""
