"""trigger-bridge: Kafka, RabbitMQ and cron triggers for functions on Kubernetes."""

__version__ = "0.1.0"
