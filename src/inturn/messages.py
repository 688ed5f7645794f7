"""Messages from later starts to the running instance: ``single_instance`` and ``send``.

Written once, above the backends, which supply only a channel (``backends.base.Channel``): a
Unix socket in the line's folder on POSIX, a named pipe on Windows. Who sent a message comes
from the channel, that is from the operating system (``Peer``), never from the message.

One message per connection, in frames (a 4-byte big-endian length, then that many bytes of
JSON in UTF-8, at most ``MAX_MESSAGE_BYTES``)::

    sender -> holder   {"v": 1, "argv": [...], "cwd": "...", "data": ...}
    holder -> sender   {"received": true}       read and checked: on_message will see it
    holder -> sender   {"reply": ...}           or {"error": {"type": ..., "message": ...}}

A holder may instead answer ``{"refused": why}`` (a user it does not accept),
``{"invalid": why}`` (a malformed or oversized message) or ``{"gone": why}`` (it
stopped listening first, or before the message's turn came: it was not handled). The
acknowledgement tells the sender whether the message can have been handled: one that never got
it, or was told ``gone``, may safely try again (``single_instance`` then tries to become the
first instance), one that got it and no answer learns that the instance ended before it
answered. An instance that stops (``release()``, or the program's end) first lets the message
in hand be handled and tells the ones behind it ``gone``, for a while (``STOP_SECONDS``).

The listener never waits on a sender: each connection is read by a thread of its own, with
``REQUEST_SECONDS`` to deliver its message, and ``on_message`` runs in one more thread, once
per message, in the order the messages arrived (were acknowledged). A slow, silent, oversized
or malformed sender is dropped with a warning and delays nobody else; an ``on_message`` that
raises sends the sender an error, which it raises as ``MessageError``. With ``MAX_PENDING``
messages in hand, the listener takes no more connections until one is done: later senders
wait in the system's queue of connections (or for room in it), within their own timeouts.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from .backends.base import Channel, Connection, LineStore, Peer
from .errors import BackendError, MessageError, NotRunning, Timeout, UsageError
from .forks import forget_after_fork
from .records import Message, Ticket, escape_controls, warn

MAX_MESSAGE_BYTES = 1024 * 1024  # a message or a reply, as JSON in UTF-8
REQUEST_SECONDS = 3.0  # a sender must have delivered its whole message by then
REPLY_SECONDS = 5.0  # a sender must have taken its answer by then
MAX_PENDING = 64  # connections being read or waiting for on_message at once
STOP_SECONDS = 5.0  # how long a stop waits for the message in hand and the answers to go out
# accept() failing for want of a resource (descriptors, memory): tried again after this long
RESOURCE_PAUSE_SECONDS = 0.1
SHORT_OF = frozenset(
    getattr(errno, name) for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
    if hasattr(errno, name)
)  # fmt: skip
PROTOCOL = 1
ANYONE = "*"  # accept_from= value: every user of the machine

_HEADER = struct.Struct(">I")


OnMessage = Callable[[Message], Any]


class Closed(ConnectionError):
    """The other side closed the connection."""


class TooLarge(ValueError):
    """A frame longer than ``MAX_MESSAGE_BYTES``."""


class Malformed(ValueError):
    """A message that is not what the protocol says."""


class Unreachable(Exception):
    """The holder could not be given the message, and so never handled it (it was ending,
    or had stopped listening): trying again is safe."""


# --------------------------------------------------------------------------- frames


def encode(document: dict[str, Any]) -> bytes:
    """One frame: ``TypeError``/``ValueError`` if it is not JSON, ``TooLarge`` if too big.
    Lone surrogates (from undecodable file names) travel as they are."""
    body = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass"
    )
    if len(body) > MAX_MESSAGE_BYTES:
        raise TooLarge(f"{len(body)} bytes, more than the {MAX_MESSAGE_BYTES} a message may hold")
    return _HEADER.pack(len(body)) + body


def read_frame(connection: Connection, deadline: float) -> bytes:
    header = _read_exactly(connection, _HEADER.size, deadline)
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE_BYTES:
        raise TooLarge(f"{size} bytes, more than the {MAX_MESSAGE_BYTES} a message may hold")
    return _read_exactly(connection, size, deadline)


def _read_exactly(connection: Connection, size: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = connection.receive(min(left, 256 * 1024), deadline)
        if not chunk:
            raise Closed("the other side closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def decode(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8", "surrogatepass"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Malformed("not JSON in UTF-8") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --------------------------------------------------------------------------- the request


def request(argv: Iterable[str], cwd: str, data: Any) -> bytes:
    """A later start's message, checked: one clear line for what cannot be sent."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Iterable):
        raise UsageError(f"argv must be a list of strings, not {argv!r}")
    argv = list(argv)
    for argument in argv:
        if not isinstance(argument, str):
            raise UsageError(f"argv must be a list of strings; {argument!r} is not one")
    if not isinstance(cwd, str):
        raise UsageError(f"cwd must be a string, not {cwd!r}")
    try:
        return encode({"v": PROTOCOL, "argv": argv, "cwd": cwd, "data": data})
    except TooLarge as exc:
        raise UsageError(
            f"the message is too large ({exc}): send the path of a file instead of its contents"
        ) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(
            f"data must be a JSON value (dict, list, str, int, float, bool or None): {exc}"
        ) from None


def parse_request(body: bytes, peer: Peer) -> Message:
    document = decode(body)
    if not isinstance(document, dict):
        raise Malformed("not a JSON object")
    if document.get("v") != PROTOCOL:
        raise Malformed(f"protocol version {document.get('v')!r}; this instance speaks {PROTOCOL}")
    argv, cwd = document.get("argv"), document.get("cwd")
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise Malformed("argv is not a list of strings")
    if not isinstance(cwd, str):
        raise Malformed("cwd is not a string")
    return Message(tuple(argv), cwd, document.get("data"), peer.pid, peer.user)


# --------------------------------------------------------------------------- who may send


class Acceptance:
    """Who may send: the listener's own user always; on a machine-wide line also the users
    named in ``accept_from`` (user names, or ``"*"`` for every user)."""

    def __init__(self, scope: str, accept_from: str | Iterable[str] | None) -> None:
        self.scope = scope
        self.anyone = False
        self.names: frozenset[str] = frozenset()
        if accept_from is None:
            return
        if scope != "machine":
            raise UsageError(
                "accept_from= is for machine-wide lines (scope='machine'): a per-user line "
                "takes messages from its own user only"
            )
        if isinstance(accept_from, str):
            accept_from = [accept_from]
        if isinstance(accept_from, bytes) or not isinstance(accept_from, Iterable):
            raise UsageError(f"accept_from must be user names or '*', not {accept_from!r}")
        names = list(accept_from)
        for name in names:
            if not isinstance(name, str) or not name:
                raise UsageError(f"accept_from must be user names or '*'; {name!r} is not one")
        self.anyone = ANYONE in names
        self.names = frozenset(_fold(name) for name in names)

    @property
    def others(self) -> bool:
        """Whether any other user may connect at all (the channel's permissions)."""
        return self.anyone or bool(self.names)

    def refusal(self, peer: Peer) -> str | None:
        """Why ``peer`` may not send (None if it may)."""
        if peer.same_user or self.anyone:
            return None
        known = {_fold(peer.user), _fold(peer.user.rpartition("\\")[2])}
        known |= {str(peer.uid)} if peer.uid is not None else set()
        known |= {peer.sid.casefold()} if peer.sid is not None else set()
        if self.names & known:
            return None
        if self.scope != "machine":
            return f"user {peer.user} may not send: a per-user line takes its own user only"
        return f"user {peer.user} may not send (not in its accept_from)"


def _fold(name: str) -> str:
    """A user name as compared: Windows ignores case in them, POSIX does not (``alice`` and
    ``Alice`` can be two accounts)."""
    return name.casefold() if sys.platform == "win32" else name


def describe(peer: Peer) -> str:
    return escape_controls(f"{peer.user} (pid {peer.pid})" if peer.pid else peer.user)


# --------------------------------------------------------------------------- listening


class _Slot:
    """One message's place in the queue: whether its sender got the acknowledgement (only
    then may ``on_message`` see it), and the answer the handler's thread leaves there."""

    def __init__(self) -> None:
        self.decided = threading.Event()
        self.acknowledged = False
        self.ready = threading.Event()
        self.answer = b""

    def decide(self, acknowledged: bool) -> None:
        self.acknowledged = acknowledged
        self.decided.set()

    def give(self, answer: bytes) -> None:
        self.answer = answer
        self.ready.set()


class Listener:
    """The first instance's ear: accepts connections on ``channel``, reads each in a thread
    of its own, and calls ``on_message`` in one thread, once per message, in arrival order."""

    def __init__(
        self, channel: Channel, on_message: OnMessage, acceptance: Acceptance, name: str
    ) -> None:
        self.channel = channel
        self.on_message = on_message
        self.acceptance = acceptance
        self.name = name
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a count below fell, or a stop
        self._pending = 0  # connections taken and not yet closed
        self._answering = 0  # acknowledged messages whose answer has not gone out yet
        self._queue: queue.SimpleQueue[tuple[Message, _Slot] | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self.stopped = False

    def start(self) -> None:
        forget_after_fork(self)
        threading.Thread(target=self._accept, daemon=True, name="inturn-listen").start()
        self._dispatcher = threading.Thread(
            target=self._dispatch, daemon=True, name="inturn-on-message"
        )
        self._dispatcher.start()

    def stop(self) -> None:
        """Stop listening (from any thread, ``on_message`` included): the socket or pipe is
        removed, the message being handled is let finish and those behind it are answered
        that the instance is gone (their senders try again, and one becomes the instance).

        Unless called from ``on_message`` itself, this waits (up to ``STOP_SECONDS``) until
        those answers have gone out: at the program's end, the listener's threads would
        otherwise die with them unsent, and the senders could not tell a message handled from
        one never looked at. So once ``release()`` returns, ``on_message`` has returned too
        (unless it ran on past ``STOP_SECONDS``, which is warned of).
        """
        with self._changed:
            if self.stopped:
                return
            self.stopped = True
            self._changed.notify_all()
        self.channel.close()
        self._queue.put(None)
        dispatcher = self._dispatcher
        if dispatcher is None or dispatcher is threading.current_thread():
            return
        deadline = time.monotonic() + STOP_SECONDS
        dispatcher.join(STOP_SECONDS)
        with self._changed:
            self._changed.wait_for(lambda: not self._answering, deadline - time.monotonic())
        if dispatcher.is_alive():
            warn(
                f"on_message of line {self.name!r} still runs {STOP_SECONDS:g}s after the "
                "instance stopped listening; its reply will not be sent"
            )

    def after_fork_in_child(self) -> None:
        """The listener's threads stay with the parent: a child's stop waits for none of
        them (nothing in the child would ever end those waits), and its locks are new."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._dispatcher = None
        self._pending = self._answering = 0

    # -- accepting

    def _accept(self) -> None:
        short = False  # accept failed for want of descriptors or memory, and said so
        while True:
            with self._changed:  # a full hand: later senders wait in the system's queue
                self._changed.wait_for(lambda: self._pending < MAX_PENDING or self.stopped)
                if self.stopped:
                    return
            try:
                connection = self.channel.accept()
            except (OSError, BackendError) as exc:
                if self.stopped:
                    return
                if isinstance(exc, OSError) and exc.errno in SHORT_OF:
                    if not short:  # a passing shortage: the connection waits for us
                        warn(f"line {self.name!r} cannot take a message now: {exc}")
                    short = True
                    with self._changed:
                        self._changed.wait_for(lambda: self.stopped, RESOURCE_PAUSE_SECONDS)
                    continue
                warn(f"line {self.name!r} stopped listening for messages: {exc}")
                return
            if connection is None:
                return
            short = False
            why = self.acceptance.refusal(connection.peer)
            with self._lock:
                if why is None:
                    self._pending += 1
            if why is not None:
                warn(
                    f"line {self.name!r} refused a message from {describe(connection.peer)}: {why}"
                )
                threading.Thread(  # never waits on the refused here
                    target=self._answer_and_close,
                    args=(connection, {"refused": why}),
                    daemon=True,
                    name="inturn-refuse",
                ).start()
                continue
            threading.Thread(
                target=self._serve, args=(connection,), daemon=True, name="inturn-message"
            ).start()

    def _answer_and_close(self, connection: Connection, document: dict[str, Any]) -> None:
        try:
            connection.send(encode(document), time.monotonic() + 1.0)
        except (OSError, TimeoutError):
            pass
        finally:
            connection.close()

    # -- one connection

    def _serve(self, connection: Connection) -> None:
        who = describe(connection.peer)
        try:
            message = self._read(connection, who)
            if message is None:
                return
            # Queued, then acknowledged: the order of the queue is the order in which senders
            # learnt that their message arrived. on_message sees it only once the sender has
            # the acknowledgement: one that got none may be sure it was not handled.
            slot = _Slot()
            with self._lock:
                queued = not self.stopped
                if queued:
                    self._queue.put((message, slot))
            if not queued:
                slot.decide(False)
                self._answer_and_close(connection, {"gone": "the instance stopped listening"})
                return
            try:
                connection.send(encode({"received": True}), time.monotonic() + REPLY_SECONDS)
            except (OSError, TimeoutError):
                slot.decide(False)
                return
            with self._lock:
                self._answering += 1
            slot.decide(True)
            try:
                slot.ready.wait()
                with suppress(OSError):  # the sender gave up waiting
                    connection.send(slot.answer, time.monotonic() + REPLY_SECONDS)
            finally:
                with self._changed:
                    self._answering -= 1
                    self._changed.notify_all()
        except Exception as exc:  # a bug here must not take the listener down
            warn(f"line {self.name!r}: a message from {who} failed: {exc!r}")
        finally:
            connection.close()
            with self._changed:
                self._pending -= 1
                self._changed.notify_all()

    def _read(self, connection: Connection, who: str) -> Message | None:
        dropped = f"line {self.name!r} dropped a message from {who}"
        try:
            body = read_frame(connection, time.monotonic() + REQUEST_SECONDS)
            return parse_request(body, connection.peer)
        except TimeoutError:
            warn(f"{dropped}: it was not sent within {REQUEST_SECONDS:g}s")
        except (TooLarge, Malformed) as exc:
            warn(f"{dropped}: {exc}")
            self._answer_and_close(connection, {"invalid": f"the message was dropped: {exc}"})
        except OSError:
            pass  # the sender went away: nothing to answer
        return None

    # -- on_message

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            message, slot = item
            slot.decided.wait()
            if not slot.acknowledged:
                continue  # its sender never learnt it arrived: it was not handled
            if self.stopped:
                slot.give(encode({"gone": "the instance stopped listening"}))
                continue
            slot.give(self._handle(message))  # never raises: this thread must go on
        while True:  # stopped: answer whatever is still queued
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[1].give(encode({"gone": "the instance stopped listening"}))

    def _handle(self, message: Message) -> bytes:
        """``on_message``'s reply to ``message``, or the error it raised, as an answer."""
        try:
            reply = self.on_message(message)
        except BaseException as exc:  # even SystemExit: in this thread it would end nothing
            warn(
                f"on_message of line {self.name!r} raised {type(exc).__name__}: {exc} "
                f"(sent to {message.user}, pid {message.pid}, as the error)"
            )
            return _error(type(exc).__name__, str(exc))
        try:
            return encode({"reply": reply})
        except Exception as exc:  # not JSON, too large, too deep
            text = f"on_message of line {self.name!r} returned a reply that cannot be sent: {exc}"
            warn(text)
            return _error(type(exc).__name__, text)


def _error(kind: str, text: str) -> bytes:
    """An error answer, its text cut to what fits."""
    return encode({"error": {"type": kind[:200], "message": text[: 64 * 1024]}})


# --------------------------------------------------------------------------- sending


def deliver(
    store: LineStore,
    holder: Ticket,
    message: bytes,
    deadline: float,
    timeout: float,
    on_received: Callable[[int | None], None] | None = None,
) -> Any:
    """Send ``message`` to the holder's channel and return its reply.

    ``Unreachable`` when it did not take the message or said it was gone before handling
    it (safe to try again), ``NotRunning``
    when it took it but ended before it answered, ``Timeout`` when it did not answer in
    time, ``MessageError`` when it answered with an error, ``BackendError`` when what is
    there is not the holder's.
    """
    pid = holder.pid
    who = f"the running instance (pid {pid}) of line {store.name!r}"
    try:
        connection = store.connect(holder, deadline)
    except PermissionError:
        raise MessageError(
            f"{who} refused the message: it takes messages from its own user only (its "
            "socket or pipe is closed to you), unless it names you in accept_from",
            "refused",
            pid,
        ) from None
    except TimeoutError:
        raise Timeout(
            f"{who} did not take the connection within {timeout:g}s: it may be hung"
        ) from None
    except OSError:
        raise Unreachable() from None
    try:
        try:
            connection.send(message, deadline)
        except TimeoutError:
            raise Timeout(
                f"{who} did not read the message within {timeout:g}s: it may be hung"
            ) from None
        except OSError:
            pass  # it closed on us: it may have said why, read on
        try:
            answer = _answer(read_frame(connection, deadline), who)
        except TimeoutError:
            raise Timeout(
                f"{who} did not take the message within {timeout:g}s: it may be hung"
            ) from None
        except (OSError, TooLarge):
            raise Unreachable() from None
        if "received" in answer:
            if on_received is not None:
                on_received(pid)
            try:
                answer = _answer(read_frame(connection, deadline), who)
            except TimeoutError:
                raise Timeout(
                    f"{who} took the message but did not answer within {timeout:g}s: its "
                    "on_message may be hung (give a longer timeout if it is just slow)"
                ) from None
            except TooLarge:
                raise MessageError(
                    f"{who} answered with more than a reply may hold", "invalid", pid
                ) from None
            except OSError:
                raise NotRunning(
                    f"{who} took the message but ended before it answered (it may or may not "
                    "have acted on it); the next start becomes the first instance",
                    pid,
                ) from None
        if "gone" in answer:  # it stopped listening before handling it: not handled
            raise Unreachable()
        return _outcome(answer, who, pid)
    finally:
        connection.close()


def _answer(body: bytes, who: str) -> dict[str, Any]:
    try:
        answer = decode(body)
    except Malformed:
        answer = None
    if not isinstance(answer, dict) or not answer.keys() & {
        "received", "reply", "error", "refused", "invalid", "gone"
    }:  # fmt: skip
        raise MessageError(f"{who} answered something that is not an answer", "invalid")
    return answer


def _outcome(answer: dict[str, Any], who: str, pid: int | None) -> Any:
    if "reply" in answer:
        return answer["reply"]
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        kind = str(error.get("type") or "Exception")
        text = escape_controls(str(error.get("message", "")))
        raise MessageError(f"{who} failed on the message: {kind}: {text}", kind, pid)
    if "refused" in answer:
        why = escape_controls(str(answer["refused"]))
        raise MessageError(f"{who} refused the message: {why}", "refused", pid)
    if "invalid" in answer:
        why = escape_controls(str(answer["invalid"]))
        raise MessageError(f"{who} could not read the message: {why}", "invalid", pid)
    raise MessageError(f"{who} answered something that is not an answer", "invalid", pid)


def send(
    store: LineStore,
    message: bytes,
    timeout: float,
    on_received: Callable[[int | None], None] | None = None,
) -> Any:
    """Deliver ``message`` to whoever holds ``store``'s line and listens; its reply.

    A holder that is on its way out (its channel already gone, or stopped before it handled
    the message) is waited for, for as long as the timeout allows, and the message then goes
    to the next holder, if one listens: the first in line, if nobody holds at that moment (a
    ``single_instance(wait=True)`` takes its messages once it holds).
    """
    store.check_channels()
    deadline = time.monotonic() + timeout
    while True:
        status = store.status()
        ahead = (*status.holders, *status.waiters)
        if not status.holders and not (ahead and ahead[0].channel):
            raise NotRunning(f"no instance of line {store.name!r} is running")
        holder = ahead[0]
        if not holder.channel:
            raise NotRunning(
                f"line {store.name!r} is held by {holder.describe(live=True)}, which does not "
                "listen for messages",
                holder.pid,
            )
        try:
            return deliver(store, holder, message, deadline, timeout, on_received)
        except Unreachable:
            wait_for_going(store, holder, deadline, timeout)


def wait_for_going(store: LineStore, holder: Ticket, deadline: float, timeout: float) -> None:
    """Sleep until ``holder``, whose channel does not answer, has left the line (a holder on
    its way out); ``Timeout`` if it is still there at the deadline."""
    left = deadline - time.monotonic()
    if left > 0 and store.wait(None, [holder.number], left, None) is not None:
        return
    raise Timeout(
        f"line {store.name!r} is held by {holder.describe(live=True)}, which did not take the "
        f"message within {timeout:g}s (its socket or pipe does not answer)",
        store.status(),
    )


def check_data(data: Any) -> None:
    """``data=`` must be a JSON value (its size is checked with the message's)."""
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(
            f"data must be a JSON value (dict, list, str, int, float, bool or None): {exc}"
        ) from None


def check_timeout(timeout: object) -> float:
    """A sender's timeout: a positive number of seconds, at most a year (cut before ``float``,
    which an integer too large for one, as ``10**400``, would make an ``OverflowError``)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise UsageError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(min(timeout, 365 * 24 * 3600.0))


def current_folder() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""
