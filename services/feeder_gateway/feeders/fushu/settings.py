"""Settings of a ``type: fushu`` source (``api_key`` belongs in secure.yml)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.feeder_gateway.feeders.polling_settings import HttpPollingSettings


class FushuSettings(HttpPollingSettings):
    """Settings of a ``type: fushu`` source; ``api_key`` belongs in secure.yml."""

    base_url: str
    """Endpoint root; the feeder polls ``{base_url}/tick?symbols=...``. No default: no
    public service implements the contract."""
    api_key: SecretStr | None = None
    """Bearer token, sent as ``Authorization: Bearer <key>``; set it in secure.yml under
    this source's name."""
    max_symbols_per_request: int = Field(50, ge=1, le=1000)
    """Larger symbol sets are split into several requests per poll (sent one after another)."""
