/**
 * The SDK's rule for setting one attribute on a span or a log record
 * (`maybeAddAttribute` in `@opentelemetry/core`, as `SpanImpl` and
 * `LogRecordImpl` apply it), shared by the kit's tracer and logger
 * (`tracer.ts`, `logger.ts`): a string, number or boolean within the limits
 * is stored as is, without the allocations of the SDK's checks; anything else
 * takes the SDK's own function, warnings included.
 */
import { diag, type Attributes } from '@opentelemetry/api';
import { AddAttributeDecision, maybeAddAttribute } from '@opentelemetry/core';

/** What a span or a record keeps of its attributes: the SDK's counts beside them. */
export interface CountedAttributes {
  readonly attributes: Attributes;
  attributesCount: number;
  droppedAttributes: number;
}

export interface AttributeLimits {
  readonly attributeCountLimit: number;
  readonly attributeValueLengthLimit: number;
}

export function setAttributeAsSdk(target: CountedAttributes, limits: AttributeLimits, key: string, value: unknown): void {
  const attributes = target.attributes as Record<string, unknown>;
  // (A limit of 0 or less is one the SDK warns about at every attribute.)
  if (key.length > 0 && limits.attributeValueLengthLimit > 0 && (typeof value === 'string' ? value.length <= limits.attributeValueLengthLimit : typeof value === 'number' || typeof value === 'boolean')) {
    if (Object.hasOwn(attributes, key)) {
      attributes[key] = value;
      return;
    }
    if (target.attributesCount < limits.attributeCountLimit) {
      attributes[key] = value;
      target.attributesCount += 1;
      return;
    }
  }
  const decision = maybeAddAttribute({ key, value, attributes: target.attributes, limits, currentAttributesCount: target.attributesCount });
  if (decision === AddAttributeDecision.DROP_LIMIT_REACHED) {
    target.droppedAttributes += 1;
    if (target.droppedAttributes === 1) diag.warn('Dropping extra attributes.');
  } else if (decision === AddAttributeDecision.ADD_NEW) {
    target.attributesCount += 1;
  }
}
