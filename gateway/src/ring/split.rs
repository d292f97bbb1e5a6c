//! Splitting an export request by the owner of each span's trace ID,
//! keeping each span under its own resource and scope.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

/// The parts of `request`, one per owner (`None` is this member), in the
/// order owners first appear. A request with one owner is returned whole,
/// without a copy.
pub fn split<K, F>(
    request: ExportTraceServiceRequest,
    mut owner: F,
) -> Vec<(K, ExportTraceServiceRequest)>
where
    K: PartialEq + Copy,
    F: FnMut(&[u8]) -> K,
{
    // Spans of one trace usually sit together: look each trace ID up once.
    let mut last: Option<(&[u8], K)> = None;
    let mut owner_of = |trace_id| match last {
        Some((id, k)) if id == trace_id => k,
        _ => {
            let k = owner(trace_id);
            last = Some((trace_id, k));
            k
        }
    };
    let mut spans = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans);
    let Some(first) = spans.next().map(|s| owner_of(&s.trace_id)) else {
        return Vec::new();
    };
    if spans.all(|s| owner_of(&s.trace_id) == first) {
        return vec![(first, request)];
    }
    drop(spans);

    struct Part<K> {
        owner: K,
        request: ExportTraceServiceRequest,
        /// 1 + the index of the resource / scope last opened in this part.
        resource: usize,
        scope: usize,
    }
    let mut parts: Vec<Part<K>> = Vec::new();
    for (ri, rs) in request.resource_spans.into_iter().enumerate() {
        let ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        } = rs;
        for (si, ss) in scope_spans.into_iter().enumerate() {
            let ScopeSpans {
                scope,
                spans,
                schema_url: scope_schema_url,
            } = ss;
            let mut last: Option<(Vec<u8>, usize)> = None;
            for span in spans {
                let at = match &last {
                    Some((id, at)) if *id == span.trace_id => *at,
                    _ => {
                        let k = owner(&span.trace_id);
                        let at = match parts.iter().position(|p| p.owner == k) {
                            Some(at) => at,
                            None => {
                                parts.push(Part {
                                    owner: k,
                                    request: ExportTraceServiceRequest::default(),
                                    resource: 0,
                                    scope: 0,
                                });
                                parts.len() - 1
                            }
                        };
                        last = Some((span.trace_id.clone(), at));
                        at
                    }
                };
                let part = &mut parts[at];
                if part.resource != ri + 1 {
                    part.request.resource_spans.push(ResourceSpans {
                        resource: resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: schema_url.clone(),
                    });
                    part.resource = ri + 1;
                    part.scope = 0;
                }
                let rs = part
                    .request
                    .resource_spans
                    .last_mut()
                    .expect("pushed above");
                if part.scope != si + 1 {
                    rs.scope_spans.push(ScopeSpans {
                        scope: scope.clone(),
                        spans: Vec::new(),
                        schema_url: scope_schema_url.clone(),
                    });
                    part.scope = si + 1;
                }
                rs.scope_spans
                    .last_mut()
                    .expect("pushed above")
                    .spans
                    .push(span);
            }
        }
    }
    parts.into_iter().map(|p| (p.owner, p.request)).collect()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;

    fn span(trace: u8, id: u8) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            ..Default::default()
        }
    }

    fn resource(n: u32) -> Option<Resource> {
        Some(Resource {
            dropped_attributes_count: n,
            ..Default::default()
        })
    }

    fn scope(name: &str, spans: Vec<Span>) -> ScopeSpans {
        ScopeSpans {
            scope: Some(InstrumentationScope {
                name: name.into(),
                ..Default::default()
            }),
            spans,
            schema_url: String::new(),
        }
    }

    #[test]
    fn spans_keep_their_resource_and_scope_and_traces_stay_together() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: resource(1),
                    scope_spans: vec![
                        scope("a", vec![span(1, 1), span(2, 2), span(1, 3)]),
                        scope("b", vec![span(2, 4)]),
                    ],
                    schema_url: "r1".into(),
                },
                ResourceSpans {
                    resource: resource(2),
                    scope_spans: vec![scope("c", vec![span(3, 5), span(1, 6)])],
                    schema_url: "r2".into(),
                },
            ],
        };
        // Trace 1 and 3 belong to owner 0, trace 2 to owner 1.
        let parts = split(request, |id| (id[0] == 2) as usize);
        assert_eq!(parts.len(), 2);
        let (o0, p0) = &parts[0];
        assert_eq!(*o0, 0);
        assert_eq!(p0.resource_spans.len(), 2);
        assert_eq!(p0.resource_spans[0].resource, resource(1));
        assert_eq!(p0.resource_spans[0].schema_url, "r1");
        assert_eq!(p0.resource_spans[0].scope_spans.len(), 1);
        assert_eq!(
            p0.resource_spans[0].scope_spans[0].spans,
            [span(1, 1), span(1, 3)]
        );
        assert_eq!(p0.resource_spans[1].resource, resource(2));
        assert_eq!(
            p0.resource_spans[1].scope_spans[0].spans,
            [span(3, 5), span(1, 6)]
        );
        let (o1, p1) = &parts[1];
        assert_eq!(*o1, 1);
        assert_eq!(p1.resource_spans.len(), 1);
        let scopes = &p1.resource_spans[0].scope_spans;
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].scope.as_ref().unwrap().name, "a");
        assert_eq!(scopes[0].spans, [span(2, 2)]);
        assert_eq!(scopes[1].scope.as_ref().unwrap().name, "b");
        assert_eq!(scopes[1].spans, [span(2, 4)]);
    }

    #[test]
    fn one_owner_keeps_the_request_whole_and_empty_gives_nothing() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource(1),
                scope_spans: vec![scope("a", vec![span(1, 1), span(2, 2)])],
                schema_url: String::new(),
            }],
        };
        let parts = split(request.clone(), |_| 7u8);
        assert_eq!(parts, vec![(7, request)]);
        assert!(split(ExportTraceServiceRequest::default(), |_| 0u8).is_empty());
    }
}
