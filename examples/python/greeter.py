#!/usr/bin/env python3
"""A Replyway backend service in Python, on confluent-kafka alone.

It speaks only the documented record contract (docs/records.md): it consumes
a request topic in a consumer group and produces each reply to the topic named
by the command's `reply-to` header.

    POST body {"name": "Ada"}  ->  200 application/json
        {"greeting": "Hello, Ada!", "served_by": "python", "correlation_id": "..."}
        reply header header-x-served-by: python
    any other body             ->  400 application/problem+json (RFC 9457)

At-least-once: offsets are stored (enable.auto.offset.store=false) only after the
replies of a batch were acknowledged by the broker, and librdkafka's auto commit
commits what was stored, also on rebalance and on close. A reply that failed for
a passing reason (e.g. a timeout) is produced again, up to 3 times while its
command's deadline has not passed; then the service seeks back to the command and
handles it (and the partition's commands after it) again. A command may thus be
handled twice, also after a crash; the gateway keeps the first reply.

Run it:
    python greeter.py --bootstrap-servers 127.0.0.1:9092 --topic greeter.requests \
        --consumer-prop client.id=greeter-1

It prints one line "ready" on stdout once it has joined its consumer group.
SIGTERM or SIGINT: it finishes the batch in hand, commits and leaves the group.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

log = logging.getLogger("greeter")

SERVED_BY = "python"
MAX_BATCH = 500
# Times a batch's failed replies are produced before their commands are read
# again from the broker (each try lasts up to message.timeout.ms).
REPLY_ATTEMPTS = 3

# Delivery errors worth sending a reply again for; any other error is permanent
# for that reply (it is logged and the command counts as handled).
RETRY_ERRORS = {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
}


# --- the contract -------------------------------------------------------------


@dataclass
class Command:
    """A request record, as the gateway produces it."""

    correlation_id: str
    reply_to: str
    deadline_ms: int | None
    content_type: str | None
    method: str | None
    path: str | None
    client_id: str | None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Reply:
    """What a handler answers; becomes a reply record."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Entry:
    """A command of the batch in hand: "done" once its offset may be stored
    (reply delivered, or nothing to reply), else "sending" or "failed"."""

    offset: int
    state: str = "done"


class NotACommand(ValueError):
    """A record that cannot be answered (no correlation id or reply-to)."""


def parse_command(msg: Message) -> Command:
    """Reads the documented headers of a request record."""
    headers: dict[str, str] = {}
    for key, value in msg.headers() or []:
        # Last one wins; the gateway sends each header once.
        headers[key.lower()] = (value or b"").decode("utf-8", errors="replace")
    correlation_id = headers.get("correlation-id")
    reply_to = headers.get("reply-to")
    if not correlation_id or not reply_to:
        missing = [h for h in ("correlation-id", "reply-to") if not headers.get(h)]
        raise NotACommand(f"no {' and no '.join(missing)} header")
    deadline_ms = None
    if "deadline" in headers:
        try:
            deadline_ms = int(headers["deadline"])
        except ValueError:
            log.warning("command %s: ignoring malformed deadline %r", correlation_id, headers["deadline"])
    return Command(
        correlation_id=correlation_id,
        reply_to=reply_to,
        deadline_ms=deadline_ms,
        content_type=headers.get("content-type"),
        method=headers.get("http-method"),
        path=headers.get("http-path"),
        client_id=headers.get("client-id"),
        params={k[len("param-"):]: v for k, v in headers.items() if k.startswith("param-")},
        headers={k[len("header-"):]: v for k, v in headers.items() if k.startswith("header-")},
        body=msg.value() or b"",
    )


def reply_headers(command: Command, reply: Reply) -> list[tuple[str, bytes]]:
    """The headers of a reply record: correlation id, status, content type and
    `header-<name>` for each HTTP header the gateway should pass on."""
    out = [
        ("correlation-id", command.correlation_id.encode()),
        ("status", str(reply.status).encode()),
        ("content-type", reply.content_type.encode()),
    ]
    out += [(f"header-{name.lower()}", value.encode()) for name, value in reply.headers.items()]
    return out


def problem(status: int, title: str, detail: str, kind: str, command: Command) -> Reply:
    """An RFC 9457 problem reply."""
    body = {
        "type": f"urn:replyway:example:greeter:{kind}",
        "title": title,
        "status": status,
        "detail": detail,
        "correlation_id": command.correlation_id,
    }
    return Reply(
        status=status,
        content_type="application/problem+json",
        body=json.dumps(body).encode(),
        headers={"x-served-by": SERVED_BY},
    )


# --- the handler --------------------------------------------------------------


def greet(command: Command) -> Reply:
    """{"name": "..."} -> a greeting; anything else -> 400."""
    try:
        request = json.loads(command.body)
    except (UnicodeDecodeError, ValueError):
        return problem(400, "Bad Request", "the body is not JSON", "invalid-body", command)
    name = request.get("name") if isinstance(request, dict) else None
    if not isinstance(name, str):
        return problem(
            400, "Bad Request", 'the body must be a JSON object with a string "name"', "invalid-body", command
        )
    answer: dict[str, Any] = {
        "greeting": f"Hello, {name}!",
        "served_by": SERVED_BY,
        "correlation_id": command.correlation_id,
    }
    # What else the gateway told us, when the route provides it.
    if "lang" in command.params:
        answer["lang"] = command.params["lang"]
    if "x-request-id" in command.headers:
        answer["request_id"] = command.headers["x-request-id"]
    if command.client_id is not None:
        answer["client_id"] = command.client_id
    return Reply(
        status=200,
        content_type="application/json",
        body=json.dumps(answer).encode(),
        headers={"x-served-by": SERVED_BY},
    )


# --- the loop -----------------------------------------------------------------


class Service:
    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        group_id: str,
        consumer_props: dict[str, str],
        producer_props: dict[str, str],
        handler: Callable[[Command], Reply],
    ) -> None:
        self.handler = handler
        self.stopping = False
        self.failed = False
        self.ready = False
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "auto.offset.reset": "earliest",
                # Store offsets ourselves, after the reply was delivered; librdkafka
                # commits the stored offsets periodically, on revoke and on close.
                "enable.auto.commit": "true",
                "enable.auto.offset.store": "false",
                "session.timeout.ms": "10000",
                "error_cb": self._on_client_error,
                **consumer_props,
            }
        )
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": "0",
                # A reply nobody waits for any more is not worth holding on to.
                "message.timeout.ms": "10000",
                "error_cb": self._on_client_error,
                **producer_props,
            }
        )
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("fatal client error: %s", err)
            self.failed = True
            self.stopping = True
        else:
            log.warning("client error: %s", err)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        if not self.ready:
            self.ready = True
            print("ready", flush=True)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are handled to the end (offsets stored) before the next poll,
        # and the auto commit commits them now; nothing is in hand here.
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def stop(self, signum: int, _frame: Any) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> None:
        try:
            while not self.stopping:
                first = self.consumer.poll(0.5)
                if first is None:
                    continue
                # Whatever else has arrived already, without waiting for more.
                batch = [first, *self.consumer.consume(MAX_BATCH - 1, 0)]
                self.handle_batch(batch)
        finally:
            self.producer.flush(10)
            # Commits the stored offsets and leaves the group at once.
            self.consumer.close()
            log.info("stopped")

    def handle_batch(self, batch: list[Message]) -> None:
        # Per partition, the batch's commands in offset order.
        entries: dict[tuple[str, int], list[Entry]] = {}
        replies: list[tuple[Command, Reply, Entry]] = []
        for msg in batch:
            if msg.error():
                if msg.error().fatal():
                    raise KafkaException(msg.error())
                log.warning("consumer: %s", msg.error())
                continue
            entry = Entry(msg.offset())
            entries.setdefault((msg.topic(), msg.partition()), []).append(entry)
            handled = self.handle(msg)
            if handled is not None:
                replies.append((*handled, entry))

        # Produce the replies, wait for their delivery reports, and send again
        # the ones that failed for a passing reason, a few times, while their
        # commands are still awaited.
        for attempt in range(1, REPLY_ATTEMPTS + 1):
            for command, reply, entry in replies:
                self.send(command, reply, entry)
            left = self.producer.flush(30)
            if left:
                log.error("%d replies not acknowledged after 30 s", left)
            replies = [r for r in replies if r[2].state != "done"]
            if not replies or self.stopping or attempt == REPLY_ATTEMPTS:
                break
            now_ms = time.time() * 1000
            for command, _reply, entry in replies:
                if command.deadline_ms is not None and now_ms > command.deadline_ms:
                    log.warning("reply to %s dropped: past its deadline", command.correlation_id)
                    entry.state = "done"
            replies = [r for r in replies if r[2].state != "done"]
            if not replies:
                break
            log.warning("sending %d replies again (attempt %d)", len(replies), attempt + 1)

        self.store(entries)

    def handle(self, msg: Message) -> tuple[Command, Reply] | None:
        """The reply to a record, or None for a record to skip."""
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        try:
            command = parse_command(msg)
        except NotACommand as e:
            log.warning("skipping %s: %s", where, e)
            return None
        if command.deadline_ms is not None and time.time() * 1000 > command.deadline_ms:
            log.info("skipping %s (%s): past its deadline", where, command.correlation_id)
            return None
        try:
            reply = self.handler(command)
        except Exception:
            log.exception("handler failed on %s (%s)", where, command.correlation_id)
            reply = problem(500, "Internal Server Error", "the handler failed", "handler-failed", command)
        return command, reply

    def send(self, command: Command, reply: Reply, entry: Entry) -> None:
        """Produces a reply record; its delivery report sets `entry.state`."""

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                entry.state = "done"
            elif err.code() in RETRY_ERRORS or err.retriable():
                log.warning("reply to %s not delivered: %s", command.correlation_id, err)
                entry.state = "failed"
            else:
                log.error("reply to %s dropped: %s", command.correlation_id, err)
                entry.state = "done"

        entry.state = "sending"
        while True:
            try:
                self.producer.produce(
                    command.reply_to,
                    key=command.correlation_id.encode(),
                    value=reply.body,
                    headers=reply_headers(command, reply),
                    on_delivery=delivered,
                )
                return
            except BufferError:
                # Local queue full: let deliveries drain.
                self.producer.poll(0.1)
            except KafkaException as e:
                log.error("reply to %s dropped: %s", command.correlation_id, e)
                entry.state = "done"
                return

    def store(self, entries: dict[tuple[str, int], list[Entry]]) -> None:
        """Stores, per partition, the offset after the unbroken run of done
        commands, and seeks back to the first one that is not, so that it is
        read (and handled) again."""
        to_store = []
        for (topic, partition), in_order in entries.items():
            done = None
            for entry in in_order:
                if entry.state == "done":
                    done = entry.offset
                    continue
                log.warning("re-reading %s[%d] from %d", topic, partition, entry.offset)
                try:
                    self.consumer.seek(TopicPartition(topic, partition, entry.offset))
                except KafkaException as e:
                    log.warning("cannot seek %s[%d] (revoked?): %s", topic, partition, e)
                break
            if done is not None:
                to_store.append(TopicPartition(topic, partition, done + 1))
        if to_store:
            try:
                self.consumer.store_offsets(offsets=to_store)
            except KafkaException as e:
                # A partition revoked meanwhile: its new owner reads it again.
                log.warning("storing offsets: %s", e)


# --- command line ---------------------------------------------------------------


def properties(pairs: list[str], what: str) -> dict[str, str]:
    props = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            sys.exit(f"{what}: expected NAME=VALUE, got {pair!r}")
        props[name.strip()] = value.strip()
    return props


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap-servers",
        default=env("GREETER_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="bootstrap.servers (env GREETER_BOOTSTRAP_SERVERS; default %(default)s)",
    )
    parser.add_argument(
        "--topic",
        action="append",
        help="request topic, repeatable (env GREETER_TOPICS, comma-separated; default greeter.requests)",
    )
    parser.add_argument(
        "--group-id",
        default=env("GREETER_GROUP_ID", "replyway-greeter-python"),
        help="consumer group (env GREETER_GROUP_ID; default %(default)s)",
    )
    parser.add_argument(
        "--consumer-prop",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra librdkafka consumer property, repeatable (env GREETER_CONSUMER_PROPS, space-separated)",
    )
    parser.add_argument(
        "--producer-prop",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra librdkafka producer property, repeatable (env GREETER_PRODUCER_PROPS, space-separated)",
    )
    parser.add_argument("--log-level", default=env("GREETER_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    topics = args.topic or [t for t in env("GREETER_TOPICS", "greeter.requests").split(",") if t]
    consumer_props = properties(env("GREETER_CONSUMER_PROPS", "").split() + args.consumer_prop, "--consumer-prop")
    producer_props = properties(env("GREETER_PRODUCER_PROPS", "").split() + args.producer_prop, "--producer-prop")

    service = Service(args.bootstrap_servers, topics, args.group_id, consumer_props, producer_props, greet)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    log.info("serving %s as group %s on %s", topics, args.group_id, args.bootstrap_servers)
    service.run()
    return 1 if service.failed else 0


if __name__ == "__main__":
    sys.exit(main())
