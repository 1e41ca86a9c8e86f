/**
 * OTLP/protobuf encoding of a batch of log records in one pass, instead of
 * the exporters' `ProtobufLogsSerializer` (`@opentelemetry/otlp-transformer`),
 * through the writer of `traceSerializer.ts` (its scratch buffer, string,
 * id, time, attribute and AnyValue primitives: see there why they are
 * cheaper than the library's estimate-then-write passes).
 *
 * The output is byte for byte the library's (severity 0 and empty strings
 * left out, dropped count and observed time always written, flags as a
 * fixed32 only when set, ids decoded by the library's lenient hex rules,
 * records grouped by resource and scope object identity in first-seen
 * order); `test/otel/logSerializer.test.ts` compares the two. Responses are
 * parsed by the library.
 */
import { SeverityNumber } from '@opentelemetry/api';
import type { IExportLogsServiceResponse } from '@opentelemetry/otlp-transformer';
import type { ReadableLogRecord } from '@opentelemetry/sdk-logs';

import {
  finishGroup,
  finishMessage,
  requestEncoders,
  startGroup,
  startMessage,
  writeAnyValue,
  writeAttributes,
  writeCount,
  writeFixed32,
  writeHrTime,
  writeId,
  writeItems,
  writeString,
  writeVarint,
  type EncodedAhead,
} from './traceSerializer';

export interface LogsSerializer {
  serializeRequest(records: ReadableLogRecord[]): Uint8Array;
  deserializeResponse(data: Uint8Array): IExportLogsServiceResponse;
}

type Resource = ReadableLogRecord['resource'];
type Scope = ReadableLogRecord['instrumentationScope'];

/** A tag of one byte and a string. */
function writeStringField(tag: number, value: string): void {
  writeVarint(tag);
  writeString(value);
}

function writeLogRecord(record: ReadableLogRecord): void {
  // An access record with its attributes and span context takes 200-500 bytes: a 2-byte length, not moved.
  const start = startMessage(0x12, 2);
  writeHrTime(0x09, record.hrTime);
  const severityNumber = record.severityNumber;
  if (severityNumber !== undefined && severityNumber !== SeverityNumber.UNSPECIFIED) writeCount(0x10, severityNumber);
  if (record.severityText) writeStringField(0x1a, record.severityText);
  const body = record.body;
  if (body !== undefined) {
    const value = startMessage(0x2a, 1);
    writeAnyValue(body);
    finishMessage(value, 1);
  }
  if (record.attributes) writeAttributes(record.attributes, 0x32);
  writeCount(0x38, record.droppedAttributesCount);
  const context = record.spanContext;
  if (context) {
    if (context.traceFlags) writeFixed32(0x45, context.traceFlags);
    if (context.traceId) writeId(0x4a, context.traceId);
    if (context.spanId) writeId(0x52, context.spanId);
  }
  writeHrTime(0x59, record.hrTimeObserved);
  if (record.eventName) writeStringField(0x62, record.eventName);
  finishMessage(start, 2);
}

function writeScopeLogs(scope: Scope, records: ReadableLogRecord[]): void {
  writeVarint(0x12);
  const group = startGroup();
  const start = startMessage(0x0a, 1);
  writeStringField(0x0a, scope.name);
  if (scope.version) writeStringField(0x12, scope.version);
  if (scope.attributes) writeAttributes(scope.attributes, 0x1a);
  if (scope.droppedAttributesCount) writeCount(0x20, scope.droppedAttributesCount);
  finishMessage(start, 1);
  writeItems(records, writeLogRecord);
  if (scope.schemaUrl) writeStringField(0x1a, scope.schemaUrl);
  finishGroup(group);
}

function writeResourceLogs(resource: Resource, scopes: Map<Scope, ReadableLogRecord[]>): void {
  writeVarint(0x0a);
  const group = startGroup();
  const start = startMessage(0x0a, 1);
  const attributes = resource.attributes;
  if (attributes) writeAttributes(attributes, 0x0a);
  // The library always writes a dropped count of 0.
  writeCount(0x10, 0);
  finishMessage(start, 1);
  for (const records of scopes.values()) writeScopeLogs((records[0] as ReadableLogRecord).instrumentationScope, records);
  if (resource.schemaUrl) writeStringField(0x1a, resource.schemaUrl);
  finishGroup(group);
}

let library: typeof import('@opentelemetry/otlp-transformer') | undefined;

function writeLogsRequest(resources: Map<Resource, Map<Scope, ReadableLogRecord[]>>): void {
  for (const [resource, scopes] of resources) writeResourceLogs(resource, scopes);
}

export const FastProtobufLogsSerializer: LogsSerializer & EncodedAhead<ReadableLogRecord> = {
  ...requestEncoders(writeLogRecord, writeLogsRequest),
  deserializeResponse(data: Uint8Array): IExportLogsServiceResponse {
    library ??= require('@opentelemetry/otlp-transformer') as typeof import('@opentelemetry/otlp-transformer');
    return library.ProtobufLogsSerializer.deserializeResponse(data);
  },
};
