"""The Bitrix24 side of the connector: credentials, a paced REST client, the offline-event queue,
the entity registry, fetching, schema mapping and the entity frame. Imports no Dagster.

One line per module:
    auth        webhooks and OAuth apps; tokens persisted atomically, refreshed single-flight
    install_check  install callbacks verified with the OAuth server's app.info
    client      Bitrix24Client: call / batch over httpx, typed errors, usage accounting
    throttle    leaky-bucket mirror and per-method operating budgets
    retry       which failures are retried, and the backoff
    batch       PHP-bracket encoding, 50-command packing, $result references
    offline     OfflineQueue: features, bind, peek, reserve, reread, orphans, ack, fail
    entities    EntityKind registry and EVENT_NAME -> kind mapping
    planning    queue events -> ids to fetch / to tombstone (pure)
    fetch       fetch_by_ids / fetch_changes (@ID lists, 2,500 per request) and the keyset scan
    schema      *.fields -> connectors.tables.TableSchema
    frame       records -> the typed entity frame of the table contract
    values      the value policy: a value that cannot become its column's type is NULL, counted
    field_values  when two values are the same field value; how a value is written (write-back)
    writeback   batched writes that carry auth_connector
"""

from connectors.bitrix24.auth import (
    FileTokenStore,
    OAuthApp,
    OAuthSession,
    TokenStore,
    WebhookCredentials,
)
from connectors.bitrix24.batch import BatchResult, Command, encode_query, result_ref
from connectors.bitrix24.client import ApiResponse, Bitrix24Client
from connectors.bitrix24.entities import (
    Action,
    EntityKind,
    EntityRegistry,
    entity_assets,
    kind_from_key,
    smart_process_kind,
)
from connectors.bitrix24.errors import (
    AccessDenied,
    ApiError,
    AuthError,
    Bitrix24Error,
    ExpiredToken,
    InvalidToken,
    MalformedRecord,
    MalformedResponse,
    NotFound,
    OperationTimeLimit,
    QueryLimitExceeded,
    ReauthorizationRequired,
    TransportError,
    WrongAuthType,
    WrongLicense,
)
from connectors.bitrix24.fetch import FetchResult, fetch_by_ids, fetch_changes, scan
from connectors.bitrix24.frame import frame_and_coercions, to_frame
from connectors.bitrix24.install_check import (
    InstallClaim,
    InstallRejected,
    InstallUnverifiable,
    InstallVerifier,
    VerifiedInstall,
)
from connectors.bitrix24.offline import (
    DegradedDelivery,
    Features,
    OfflineQueue,
    QueuePeek,
    Reservation,
    ReserveResult,
)
from connectors.bitrix24.planning import ChangePlan, KindPlan, UnknownEvent, plan_changes
from connectors.bitrix24.queue_rows import QueueEvent
from connectors.bitrix24.retry import RetryPolicy
from connectors.bitrix24.schema import schema_from_fields, table_schema
from connectors.bitrix24.throttle import RateLimits, Throttle
from connectors.bitrix24.values import Coercions
from connectors.bitrix24.writeback import LoopAvoidanceUnavailable, WriteBack

__all__ = [
    "AccessDenied",
    "Action",
    "ApiError",
    "ApiResponse",
    "AuthError",
    "BatchResult",
    "Bitrix24Client",
    "Bitrix24Error",
    "ChangePlan",
    "Coercions",
    "Command",
    "DegradedDelivery",
    "EntityKind",
    "EntityRegistry",
    "ExpiredToken",
    "Features",
    "FetchResult",
    "FileTokenStore",
    "InstallClaim",
    "InstallRejected",
    "InstallUnverifiable",
    "InstallVerifier",
    "InvalidToken",
    "KindPlan",
    "LoopAvoidanceUnavailable",
    "MalformedRecord",
    "MalformedResponse",
    "NotFound",
    "OAuthApp",
    "OAuthSession",
    "OfflineQueue",
    "OperationTimeLimit",
    "QueryLimitExceeded",
    "QueueEvent",
    "QueuePeek",
    "RateLimits",
    "ReauthorizationRequired",
    "Reservation",
    "ReserveResult",
    "RetryPolicy",
    "Throttle",
    "TokenStore",
    "TransportError",
    "UnknownEvent",
    "VerifiedInstall",
    "WebhookCredentials",
    "WriteBack",
    "WrongAuthType",
    "WrongLicense",
    "encode_query",
    "entity_assets",
    "fetch_by_ids",
    "fetch_changes",
    "frame_and_coercions",
    "kind_from_key",
    "plan_changes",
    "result_ref",
    "scan",
    "schema_from_fields",
    "smart_process_kind",
    "table_schema",
    "to_frame",
]
