"""One Alpaca stream-v2 WebSocket: upgrade, welcome, auth, subscribe diffs, frames, error codes.

Flow: upgrade (``Content-Type: application/msgpack`` when ``msgpack``; key headers when
``auth_in_headers``) → read every frame the server queued up to its welcome
``[{"T":"success","msg":"connected"}]`` (an error among them fails the connection by
its code) → auth message → ``authenticated`` → the reconnect driver calls ``sync`` with
the wanted set (subscribe/unsubscribe diffs of ``SubscriptionState``) → ``batches``.
Messages are handled one by one in arrival order, so a frame holding several control
messages (welcome and auth answer, or an error) loses none.

Every error code becomes a ``SourceFailure`` of its class: 402/409/410 configuration
(naming the setting), 406 session held elsewhere, 401/404/407/500 transient; 405 and 400
answer a subscription request and are handled by the subscription state.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import msgpack  # type: ignore[import-untyped]
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, InvalidURI

from services.feeder_gateway.feeders.alpaca.parse import FrameParser, decode_json, decode_msgpack
from services.feeder_gateway.feeders.alpaca.settings import AlpacaSettings
from services.feeder_gateway.feeders.alpaca.subscription import Event, SubscriptionState
from services.feeder_gateway.feeders.alpaca.wire import (
    HEADER_KEY,
    HEADER_SECRET,
    MSG_AUTHENTICATED,
    MSG_CONNECTED,
    MSGPACK_CONTENT_TYPE,
    T_ERROR,
    T_SUBSCRIPTION,
    T_SUCCESS,
    ErrorCode,
    auth_message,
)
from services.feeder_gateway.feeders.base import FeederContext
from services.feeder_gateway.feeders.lifecycle import FailureKind, SourceFailure
from services.feeder_gateway.feeders.polling import retry_after_s
from shared.dto import PriceUpdate, utcnow
from shared.logs import kv


def error_failure(code: object, text: str, name: str, s: AlpacaSettings) -> SourceFailure | None:
    """What an error code means for the connection; None: not fatal to it (400, 403, 405)."""
    if code == ErrorCode.AUTH_FAILED:
        return SourceFailure(
            FailureKind.CONFIGURATION,
            f"{name}: authentication failed ({code} {text}): check key/secret in secure.yml under '{name}'",
            setting="key",
        )
    if code == ErrorCode.INSUFFICIENT_SUBSCRIPTION:
        return SourceFailure(
            FailureKind.CONFIGURATION,
            f"{name}: insufficient subscription ({code} {text}): feed '{s.feed}' is not in the plan: "
            f"set 'feed' (iex on the free plan)",
            setting="feed",
        )
    if code == ErrorCode.INVALID_SUBSCRIBE_ACTION:
        return SourceFailure(
            FailureKind.CONFIGURATION,
            f"{name}: invalid subscribe action for feed '{s.feed}' ({code} {text}): check 'channels' "
            f"{list(s.channels)} and 'feed'",
            setting="channels",
        )
    if code == ErrorCode.CONNECTION_LIMIT:
        return SourceFailure(FailureKind.SESSION_HELD, f"connection limit exceeded ({code} {text})")
    if code in (ErrorCode.NOT_AUTHENTICATED, ErrorCode.AUTH_TIMEOUT, ErrorCode.SLOW_CLIENT, ErrorCode.INTERNAL):
        return SourceFailure(FailureKind.TRANSIENT, f"alpaca error {code}: {text}")
    return None


class AlpacaConnection:
    """A live, authenticated stream; built by ``open``."""

    up_on_first_batch: ClassVar[bool] = False

    def __init__(
        self, settings: AlpacaSettings, ctx: FeederContext, parser: FrameParser, subs: SubscriptionState
    ) -> None:
        self._s = settings
        self._ctx = ctx
        self._parser = parser
        self._subs = subs
        self._ws: ClientConnection | None = None
        self._backlog: deque[dict[str, Any]] = deque()  # control messages read, not yet handled
        self._frames = ctx.metrics.frames.labels(ctx.name)
        self.detail: dict[str, Any] = {"url": settings.stream_url, "feed": settings.feed, "msgpack": settings.msgpack}

    # --- opening -----------------------------------------------------------------------

    async def open(self, key: str, secret: str) -> None:
        """Upgrade, read the welcome (and whatever came before it), authenticate."""
        s = self._s
        headers: list[tuple[str, str]] = []
        if s.msgpack:
            headers.append(("Content-Type", MSGPACK_CONTENT_TYPE))
        if s.auth_in_headers:
            headers += [(HEADER_KEY, key), (HEADER_SECRET, secret)]
        try:
            self._ws = await connect(
                s.stream_url,
                additional_headers=headers,
                open_timeout=s.connect_timeout_s,
                ping_interval=s.ping_interval_s,
                ping_timeout=s.ping_timeout_s,
                close_timeout=s.close_timeout_s,
                max_size=s.max_frame_bytes,
                proxy=s.proxy,
            )
        except InvalidURI as e:
            raise SourceFailure(
                FailureKind.CONFIGURATION,
                f"{self._ctx.name}: invalid url {e.uri!r}: fix 'url' in data_sources.yml",
                setting="url",
            ) from None
        except InvalidStatus as e:
            status = e.response.status_code
            message = f"upgrade refused: HTTP {status}"
            if status == 429:
                retry = retry_after_s(e.response.headers.get("Retry-After"))
                raise SourceFailure(FailureKind.RATE_LIMITED, message, retry_after_s=retry) from None
            raise SourceFailure(FailureKind.TRANSIENT, message) from None
        self._subs.reset()
        try:
            async with asyncio.timeout(s.auth_timeout_s):
                await self._until_success(MSG_CONNECTED)
                if not s.auth_in_headers:
                    await self._send(auth_message(key, secret))
                await self._until_success(MSG_AUTHENTICATED)
        except TimeoutError:
            raise SourceFailure(
                FailureKind.TRANSIENT, f"not authenticated within auth_timeout_s={s.auth_timeout_s}"
            ) from None

    async def _until_success(self, want: str) -> None:
        """Handle messages in order until ``success: want``; the rest stay queued."""
        while True:
            while self._backlog:
                m = self._backlog.popleft()
                if m.get("T") == T_SUCCESS and m.get("msg") == want:
                    return
                self._control(m)
            await self._read_frame()

    # --- subscriptions --------------------------------------------------------------------

    async def sync(self, wanted: frozenset[str]) -> None:
        """Send the subscribe/unsubscribe diffs that make the server follow ``wanted``."""
        plan = self._subs.plan(wanted)
        # the parser first: data for dropped symbols still arriving is discarded, data for
        # new ones is accepted from the first frame
        self._parser.set_wanted(plan.accepted)
        self._emit(plan.events)
        for msg in plan.messages:
            await self._send(msg)

    # --- reading ---------------------------------------------------------------------------

    async def batches(self) -> AsyncGenerator[list[PriceUpdate], None]:
        """The ticks of each frame that has any; control messages handled on the way."""
        while True:
            while self._backlog:
                self._control(self._backlog.popleft())
            ticks = await self._read_frame()
            if ticks:
                yield ticks

    async def _read_frame(self) -> list[PriceUpdate]:
        """One frame: its ticks returned, its control messages queued."""
        assert self._ws is not None
        raw = await self._ws.recv()
        receive_time = utcnow()
        self._frames.inc()
        msgs = self._decode(raw)
        if msgs is None:
            return []
        ticks, controls, _ = self._parser.parse(msgs, receive_time)
        self._backlog.extend(controls)
        return ticks

    def _control(self, m: dict[str, Any]) -> None:
        kind = m.get("T")
        if kind == T_SUBSCRIPTION:
            self._emit(self._subs.on_echo(m))
        elif kind == T_ERROR:
            self._on_error(m)
        # other success messages (a repeated welcome) change nothing

    def _on_error(self, m: dict[str, Any]) -> None:
        code, text = m.get("code"), str(m.get("msg", ""))[:200]
        failure = error_failure(code, text, self._ctx.name, self._s)
        if failure is not None:
            raise failure
        if code == ErrorCode.SYMBOL_LIMIT:
            events = self._subs.on_symbol_limit()
            self._parser.set_wanted(self._subs.accepted())
            self._emit(events)
            return
        if code == ErrorCode.INVALID_SYNTAX:
            rejected = self._subs.on_rejected()
            if rejected is not None:
                action, symbols = rejected
                self._ctx.log.error(
                    "request rejected as invalid syntax",
                    extra=kv(code=code, msg=text, action=action.value, symbols=len(symbols)),
                )
                return
        self._ctx.log.warning("alpaca error", extra=kv(code=code, msg=text))

    def _emit(self, events: list[Event]) -> None:
        for state, detail in events:
            self._ctx.log.warning(state, extra=kv(**detail))
            self._ctx.emit_status(state, detail)

    def _decode(self, raw: str | bytes) -> Any:
        try:
            if self._s.msgpack and type(raw) is bytes:
                return decode_msgpack(raw)
            return decode_json(raw)
        except (msgspec.DecodeError, ValueError, TypeError, msgpack.UnpackException):
            self._ctx.malformed("undecodable_frame", raw[:160])
            return None

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self._ws is not None
        if self._s.msgpack:
            await self._ws.send(msgpack.packb(msg))
        else:
            await self._ws.send(msgspec.json.encode(msg).decode())

    # --- ending ----------------------------------------------------------------------------

    def abort(self) -> None:
        if self._ws is not None:
            self._ws.transport.abort()

    async def close(self) -> None:
        """Close with a handshake (bounded): the server frees the plan's connection at once."""
        if self._ws is not None:
            await self._ws.close()
