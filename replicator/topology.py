"""RabbitMQ topology: declared idempotently by every process that uses it.

exchange "minio-s3-mirror" (direct, durable)
  "tasks"  -> quorum queue minio-s3-mirror.tasks  (dead-letters to the DLX,
              x-delivery-limit against poison redelivery loops)
  "retry.<tier>" -> minio-s3-mirror.retry.<tier> (fixed TTL, then dead-letters
              back to "tasks"; one TTL per queue so messages never wait behind
              a longer one)
exchange "minio-s3-mirror.dlx" (fanout) -> minio-s3-mirror.dead (parking queue)
"""

from __future__ import annotations

from pika.adapters.blocking_connection import BlockingChannel

EXCHANGE = "minio-s3-mirror"
DLX = "minio-s3-mirror.dlx"
WORK_QUEUE = "minio-s3-mirror.tasks"
DEAD_QUEUE = "minio-s3-mirror.dead"
TASKS = "tasks"  # routing key of the work queue (also for MinIO's own AMQP target)
DELIVERY_LIMIT = 20
# Delayed retries after in-process retries are spent (MIRROR_RETRY_DELAYS): 5 s, 30 s,
# 2 min, 10 min. A tier's queue is named for its delay, so other delays make other queues.
RETRY_TIERS_S = (5, 30, 120, 600)


def retry_route(seconds: int) -> str:
    """Routing key of the delay tier that holds a task for this many seconds."""
    return f"retry.{seconds}s"


def declare(channel: BlockingChannel, tiers: tuple[int, ...] = RETRY_TIERS_S) -> None:
    channel.exchange_declare(EXCHANGE, "direct", durable=True)
    channel.exchange_declare(DLX, "fanout", durable=True)
    channel.queue_declare(
        WORK_QUEUE,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": DLX,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": DELIVERY_LIMIT,
        },
    )
    channel.queue_bind(WORK_QUEUE, EXCHANGE, TASKS)
    channel.queue_declare(DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(DEAD_QUEUE, DLX)
    for seconds in tiers:
        name = retry_route(seconds)
        channel.queue_declare(
            f"{WORK_QUEUE}.{name}",
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": seconds * 1000,
                "x-dead-letter-exchange": EXCHANGE,
                "x-dead-letter-routing-key": TASKS,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        channel.queue_bind(f"{WORK_QUEUE}.{name}", EXCHANGE, name)
