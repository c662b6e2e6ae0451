"""Bodies of the stored-completion endpoints."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from server.protocol.request import check_metadata


class MetadataUpdate(BaseModel):
    """POST /v1/chat/completions/{id}: replaces the metadata (same limits as on create)."""

    model_config = ConfigDict(extra="forbid")

    metadata: Annotated[dict[str, str] | None, AfterValidator(check_metadata)]
