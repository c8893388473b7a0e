"""``trigger-bridge demo`` (:mod:`bridge.demo.main`): cron always, Kafka and RabbitMQ when
a broker is at hand."""

from bridge.demo.main import run_demo

__all__ = ["run_demo"]
