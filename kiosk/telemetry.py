"""Telemetry: the kiosk's MQTT v5 client for the city's dashboard (paho-mqtt 2.x).

One publisher thread owns every publish (paho's network thread only hands it what happened:
connected, disconnected, a PUBACK, a command). While connected it sends the outbox rows in seq
order, at most WINDOW unacknowledged at once, and marks each one sent when its PUBACK says so
(kiosk/outbox.py: in a file of their own, so the core never waits on it); a row the broker refuses
(a v5 reason code such as 0x87 Not authorized) is logged, kept, and sent again with a growing
delay. Rows recorded before the connection they go out on are flagged `historical`. On every
(re)connect it publishes `online` (the last will says `offline`) and every retained topic; while
connected it publishes a retained topic again whenever its content changes. Remote commands on
`cmd/<name>` are read and checked (kiosk/snapshots.py), queued to the core as Commands, and
answered on the request's v5 response topic, else on `cmd_result`.

The core only calls `state_changed` (a dict stored, an event set) and never waits on the network;
a broker away for days costs nothing but outbox rows.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from drivers.base import DeviceFault
from kiosk import outbox, snapshots
from kiosk.config import Config
from kiosk.errors import KioskError
from kiosk.events import Command
from kiosk.ledger_base import Actor, iso
from kiosk.requests import Request

log = logging.getLogger(__name__)
paho_log = logging.getLogger(f"{__name__}.paho")
# paho 2.2 logs this at ERROR when its network thread turns once more after disconnect() closed
# the socket from another thread, as a clean stop does; a connection that fails is told apart by
# on_connect and on_disconnect, which the publisher logs itself.
paho_log.addFilter(lambda record: not record.getMessage().startswith("Client is not connected"))

WINDOW = 10  # outbox rows in flight at once
READ_AHEAD = 100  # outbox rows read at once (a backlog costs a query per hundred, not per row)
# The marks are written at most this often: each write dirties pages that the core's next
# synchronous commit would otherwise flush too (a mark per sale made every sale slower).
FLUSH_S = 2.0
POLL_S = 0.25  # how often the outbox is looked at when nothing wakes the publisher
SNAPSHOT_MIN_S = 1.0  # retained topics are rebuilt at most this often
SNAPSHOT_MAX_S = 60.0  # and at least this often (the cash box fills with every coin)
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0
STOP_WAIT_S = 3.0  # for the `offline` PUBACK on a clean stop
DEVICE = "telemetry"
HA_PREFIX = "homeassistant"
NOT_AUTHORIZED = 0x87
FAULT_CODES = ("refused", "error")
MAX_PACKET_BYTES = 16 * 1024  # the broker sends nothing larger (commands are 4 KiB at most)


class Telemetry:
    def __init__(
        self,
        config: Config,
        ledger: str | Path,
        submit: Callable[[Any], None],
    ) -> None:
        self.config = config
        self.mqtt = config.mqtt
        self.ledger = str(ledger)
        self._submit = submit  # the core's queue: Commands and the telemetry fault
        self.base = f"{self.mqtt.prefix}/{config.kiosk.id}"
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()  # C, no locks of ours
        self._stop = threading.Event()
        self._core_state: dict[str, Any] = {}
        self._refresh = threading.Event()
        self._connected = False
        self._last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._sent_count = 0
        self._acked_up_to = 0  # every seq up to it acknowledged (marked at the next flush)
        self._faulty = False  # a telemetry fault is raised
        self._clean = False  # a publish was accepted on this connection

    # --- what other threads call -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def state_changed(self, state: dict[str, Any]) -> None:
        """The core's last state, after a change that may have written outbox rows (a sale,
        a fault): the publisher looks at once. Never blocks."""
        self._core_state = state
        self._inbox.put(("wake",))

    def refresh(self) -> None:
        """Publish every retained topic again (the `refresh` command)."""
        self._refresh.set()
        self._inbox.put(("wake",))

    def status(self) -> dict[str, Any]:
        where = self.mqtt.socket or f"{self.mqtt.host}:{self.mqtt.port}"
        return {
            "enabled": True,
            "connected": self._connected,
            "broker": where,
            "prefix": self.base,
            "last_error": self._last_error,
            "sent": self._sent_count,
            "acked_up_to": self._acked_up_to,
        }

    def close(self) -> None:
        """Stop: `offline` published and acknowledged (within a few seconds), then
        disconnected."""
        if self._thread is None:
            return
        self._stop.set()
        self._inbox.put(("wake",))
        self._thread.join(timeout=STOP_WAIT_S + 5)
        self._thread = None

    # --- the paho client -----------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        m = self.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.config.kiosk.id,
            protocol=mqtt.MQTTv5,
            transport="unix" if m.socket else "tcp",
        )
        client.enable_logger(paho_log)
        client.will_set(f"{self.base}/status", "offline", qos=1, retain=True)
        if m.password_file is not None:
            try:
                password = Path(m.password_file).read_text(encoding="utf-8").strip()
            except OSError as err:
                raise KioskError(f"mqtt.password_file {m.password_file}: {err.strerror}") from err
            client.username_pw_set(m.username or self.config.kiosk.id, password)
        elif m.username is not None:
            client.username_pw_set(m.username)
        if m.tls_ca is not None or m.tls_cert is not None:
            client.tls_set(ca_certs=m.tls_ca, certfile=m.tls_cert, keyfile=m.tls_key)
        client.reconnect_delay_set(1, 60)
        client.max_inflight_messages_set(2 * WINDOW)
        client.max_queued_messages_set(200)  # a safety net: the outbox holds what matters
        client.on_connect = lambda c, u, flags, rc, props: self._inbox.put(("connected", rc))
        client.on_disconnect = lambda c, u, flags, rc, props: self._inbox.put(("gone", rc))
        client.on_publish = lambda c, u, mid, rc, props: self._inbox.put(("ack", mid, rc))
        client.on_subscribe = lambda c, u, mid, rcs, props: self._inbox.put(("suback", rcs))
        client.on_message = lambda c, u, msg: self._inbox.put(("message", msg))
        return client

    # --- the publisher thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._client = self._make_client()
            self._serve()
        except KioskError as err:  # e.g. an unreadable password file: said, and left there
            self._error(str(err))
            self._raise_fault("error", str(err))
        except Exception:  # the top of this thread: telemetry stops, selling goes on
            log.exception("telemetry stopped")
            self._raise_fault("error", "telemetry stopped on an internal error; see the log")

    def _serve(self) -> None:
        assert self._client is not None
        client = self._client
        m = self.mqtt
        reader = outbox.Reader(self.ledger)
        try:
            marks = outbox.Marks(self.ledger, reader.ledger_id())
        except BaseException:
            reader.close()
            raise
        link = _Link(marks)
        try:
            limits = Properties(PacketTypes.CONNECT)
            limits.MaximumPacketSize = MAX_PACKET_BYTES
            host = str(m.socket or m.host)  # a socket path is paho's "host" on a unix transport
            client.connect_async(host, m.port, m.keepalive_s, clean_start=True, properties=limits)
            client.loop_start()
            while not self._stop.is_set():
                self._take(link, reader)
                if time.monotonic() - marks.flushed_at >= FLUSH_S:
                    marks.flush()  # a mark lost in a crash is a duplicate, no more
                if self._connected:
                    self._send_rows(link, reader)
                    self._send_snapshots(link, reader)
            self._say_offline(link)
        finally:
            client.loop_stop()
            reader.close()
            marks.close()

    def _take(self, link: _Link, reader: outbox.Reader) -> None:
        """What happened since the last turn (waiting up to POLL_S for the first thing)."""
        try:
            item = self._inbox.get(timeout=POLL_S)
        except queue.Empty:
            return
        while True:
            self._handle(item, link, reader)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: tuple[Any, ...], link: _Link, reader: outbox.Reader) -> None:
        assert self._client is not None
        kind = item[0]
        if kind == "connected":
            if item[1].is_failure:
                self._error(f"connection refused: {item[1]}")
                return
            self._connected = True
            link.connected(reader.last_seq())
            self._clean = False  # no publish accepted yet on this connection
            log.info("telemetry connected to %s", self.status()["broker"])
            # Retain as published: a command published retained is seen as such, and ignored.
            options = SubscribeOptions(qos=1, retainAsPublished=True)
            self._client.subscribe(f"{self.base}/cmd/+", options=options)
            self._publish(link, "status", "online", retain=True)
            self._refresh.set()
        elif kind == "gone":
            if self._connected:
                log.warning("telemetry disconnected: %s", item[1])
            self._connected = False
            self._client.drop_out_messages()  # the outbox sends them again, in order
            link.disconnected()
        elif kind == "ack":
            self._acked(link, item[1], item[2])
        elif kind == "suback":
            refused = [rc for rc in item[1] if rc.is_failure]
            if refused:
                self._error(f"subscription to {self.base}/cmd/+ refused: {refused[0]}")
                self._raise_fault("refused", f"the broker refuses the commands: {refused[0]}")
        elif kind == "message":
            self._command(item[1])
        elif kind == "reply" and self._connected:
            self._client.publish(item[1], json.dumps(item[2]), qos=1, properties=item[3])

    def _acked(self, link: _Link, mid: int, rc: Any) -> None:
        seq = link.inflight.pop(mid, None)
        topic = link.topics.pop(mid, None)
        if rc.is_failure:
            what = f"seq {seq}" if seq is not None else topic or "a message"
            self._error(f"the broker refused {what}: {rc}")
            if seq is not None:
                link.refused(seq)
            elif topic is not None:
                link.refused_topics.add(topic)
                link.published.pop(topic, None)  # sent again at the next look
            tracked = seq is not None or topic is not None  # not a reply or a removal
            if rc.value == NOT_AUTHORIZED and tracked and not self._faulty:
                self._raise_fault("refused", f"publish not authorized: {rc}")
            return
        if seq is not None:
            link.acked(seq)
            self._sent_count += 1
            self._acked_up_to = link.marks.watermark
        if topic is not None:
            link.refused_topics.discard(topic)
        if not link.clear_of_refusals():
            return
        if self._faulty or not self._clean:  # a fault of an earlier run is mended too
            self._clean = True
            self._clear_faults()

    def _send_rows(self, link: _Link, reader: outbox.Reader) -> None:
        room = WINDOW - len(link.inflight)
        if room <= 0:
            return
        for row in link.due(reader, room):
            message = row.message_json(self.config.kiosk.id, historical=row.seq <= link.live_after)
            mid = self._publish(link, f"event/{row.kind}", message, retain=False)
            if mid is None:  # paho's queue is full: this row and those after it, later
                link.not_sent(row.seq)
                return
            link.sent(mid, row.seq)

    def _send_snapshots(self, link: _Link, reader: outbox.Reader) -> None:
        now = time.monotonic()
        if now - link.looked_at < SNAPSHOT_MIN_S and not self._refresh.is_set():
            return  # looked at most once a second
        link.looked_at = now
        changed = link.last_seq_seen != reader.last_seq() or link.state_seen != self._core_state
        due = now - link.snapshot_at >= (SNAPSHOT_MIN_S if changed else SNAPSHOT_MAX_S)
        if not (due or self._refresh.is_set()):
            return
        everything = self._refresh.is_set()
        self._refresh.clear()
        link.snapshot_at, link.last_seq_seen = now, reader.last_seq()
        link.state_seen = self._core_state
        topics = snapshots.retained(reader.db, self.config, self._core_state, _now())
        if everything:
            # Faults cleared while the kiosk was away may still be retained: cleared again.
            link.published = dict.fromkeys(snapshots.past_faults(reader.db), "")
            self._discovery(link, reader)
        for topic in sorted(set(link.published) - set(topics)):
            # Cleared: an empty retained message removes it (kept for later if paho is full).
            if self._publish(link, topic, "", retain=True) is not None:
                del link.published[topic]
        for topic, payload in topics.items():
            if snapshots.same(link.published.get(topic), payload):
                continue
            if self._publish(link, topic, json.dumps(payload), retain=True) is not None:
                link.published[topic] = payload

    def _discovery(self, link: _Link, reader: outbox.Reader) -> None:
        assert self._client is not None
        topic = f"{HA_PREFIX}/device/{self.config.kiosk.id}/config"
        if not self.mqtt.ha_discovery:
            # Removed when turned off; not tracked: a broker without the discovery topic in its
            # ACL refuses it, and that is no fault of a kiosk that does not use discovery.
            self._client.publish(topic, "", qos=1, retain=True)
            return
        slots = [s.id for s in self.config.slots]
        message = snapshots.discovery(self.config, self.base, slots)
        self._client.publish(topic, json.dumps(message), qos=1, retain=True)

    def _publish(self, link: _Link, topic: str, payload: str, *, retain: bool) -> int | None:
        assert self._client is not None
        info = self._client.publish(f"{self.base}/{topic}", payload, qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            return None
        link.topics[info.mid] = topic
        return int(info.mid)

    def _say_offline(self, link: _Link) -> None:
        assert self._client is not None
        if self._connected:
            info = self._client.publish(f"{self.base}/status", "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=STOP_WAIT_S)
            except (RuntimeError, ValueError):
                log.warning("telemetry: `offline` not acknowledged before the stop")
        self._client.disconnect()

    # --- commands ----------------------------------------------------------------------------

    def _command(self, message: mqtt.MQTTMessage) -> None:
        name = message.topic.rsplit("/", 1)[-1]
        if message.retain:  # a command left on the broker is not an order given now
            log.warning("retained command %s ignored", message.topic)
            return
        read = snapshots.read_command(name, bytes(message.payload))
        props = getattr(message, "properties", None)
        response = self._response_topic(getattr(props, "ResponseTopic", None))
        answer = Properties(PacketTypes.PUBLISH)
        correlation = getattr(props, "CorrelationData", None)
        if correlation is not None:
            answer.CorrelationData = correlation

        def reply(outcome: dict[str, Any]) -> None:
            payload = {"cmd_id": read.cmd_id, **outcome}
            self._inbox.put(("reply", response, payload, answer))

        user = self.mqtt.username or self.config.kiosk.id
        by = Actor(f"{user} (city)", "mqtt")
        request = read.request or Request(read.name)
        self._submit(Command(request, by, reply, read.cmd_id, read.refusal))

    def _response_topic(self, asked: str | None) -> str:
        """The request's response topic when it is `cmd_result` or below it, else `cmd_result`:
        a reply must land neither outside the kiosk's subtree (the broker would refuse it) nor
        on its other topics (a reply posing as a sale or a status)."""
        answers = f"{self.base}/cmd_result"
        wildcard = asked is not None and ("+" in asked or "#" in asked)
        if asked and not wildcard and (asked == answers or asked.startswith(f"{answers}/")):
            return asked
        return answers

    # --- errors and the telemetry fault ------------------------------------------------------

    def _error(self, what: str) -> None:
        log.error("telemetry: %s", what)
        self._last_error = f"{iso(datetime.now(UTC))} {what}"

    def _raise_fault(self, code: str, detail: str) -> None:
        self._faulty = True
        self._submit(DeviceFault(DEVICE, code, True, detail, time.monotonic()))

    def _clear_faults(self) -> None:
        """Publishing works: the telemetry faults (this run's or an earlier one's) clear."""
        self._faulty = False
        for code in FAULT_CODES:
            self._submit(DeviceFault(DEVICE, code, False, "publishes accepted", time.monotonic()))


class _Link:
    """The publisher's bookkeeping for one connection at a time."""

    def __init__(self, marks: outbox.Marks) -> None:
        self.marks = marks
        self.inflight: dict[int, int] = {}  # mid -> seq
        self.topics: dict[int, str] = {}  # mid -> retained topic in flight
        self.refused_topics: set[str] = set()
        self.cursor = marks.watermark  # the last seq handed to paho on this connection
        self.ahead: deque[outbox.Row] = deque()  # rows read after the cursor, in seq order
        self.live_after = 0  # rows up to this seq were recorded before the connection
        self.retry: dict[int, tuple[float, float]] = {}  # seq -> (when, delay)
        self.published: dict[str, Any] = {}
        self.snapshot_at = 0.0  # retained topics last rebuilt
        self.looked_at = 0.0  # and last looked at
        self.last_seq_seen = -1
        self.state_seen: dict[str, Any] = {}

    def connected(self, last_seq: int) -> None:
        self.inflight.clear()
        self.rewind(self.marks.watermark)
        self.live_after = last_seq
        self.retry = {seq: (0.0, delay) for seq, (_, delay) in self.retry.items()}

    def disconnected(self) -> None:
        self.inflight.clear()
        self.topics.clear()
        self.published = {}

    def not_sent(self, seq: int) -> None:
        if seq in self.retry:
            self.retry[seq] = (0.0, self.retry[seq][1])
        else:
            self.rewind(min(self.cursor, seq - 1))

    def rewind(self, cursor: int) -> None:
        self.cursor = cursor
        self.ahead.clear()

    def due(self, reader: outbox.Reader, room: int) -> list[outbox.Row]:
        """Rows to send now: refused ones whose delay is over, then new ones in seq order."""
        now = time.monotonic()
        waiting = [s for s, (when, _) in sorted(self.retry.items()) if when <= now]
        rows: list[outbox.Row] = []
        for seq in waiting[:room]:
            rows += reader.after(seq - 1, 1)
        while len(rows) < room:
            if not self.ahead:
                self.ahead.extend(reader.after(self.cursor, READ_AHEAD))
                if not self.ahead:
                    break
            row = self.ahead.popleft()
            self.cursor = row.seq
            if not self.marks.done(row.seq) and row.seq not in self.retry:
                rows.append(row)
        return rows

    def sent(self, mid: int, seq: int) -> None:
        self.inflight[mid] = seq
        self.topics.pop(mid, None)  # a row: counted by its seq
        if seq in self.retry:
            self.retry[seq] = (float("inf"), self.retry[seq][1])  # in flight again

    def acked(self, seq: int) -> None:
        self.retry.pop(seq, None)
        self.marks.acked(seq)

    def refused(self, seq: int) -> None:
        _, delay = self.retry.get(seq, (0.0, RETRY_MIN_S / 2))
        delay = min(RETRY_MAX_S, delay * 2)
        self.retry[seq] = (time.monotonic() + delay, delay)

    def clear_of_refusals(self) -> bool:
        return not self.retry and not self.refused_topics


def _now() -> str:
    return iso(datetime.now(UTC))
