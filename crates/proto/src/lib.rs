//! tiermon's gRPC contract between tiers, generated from `proto/` at build
//! time.
//!
//! [`v1::push_client::PushClient`] / [`v1::push_server::PushServer`] carry
//! batches up the hierarchy; [`v1::query_client::QueryClient`] /
//! [`v1::query_server::QueryServer`] answer queries on every tier. Health is
//! the standard `grpc.health.v1` service.

#![allow(missing_debug_implementations)]

/// Package `tiermon.v1`.
#[allow(clippy::all, missing_docs, unsafe_code)]
pub mod v1 {
    tonic::include_proto!("tiermon.v1");
}

/// Package `prometheus`: the remote_write v1 messages.
#[allow(clippy::all, missing_docs, unsafe_code)]
pub mod prometheus {
    tonic::include_proto!("prometheus");
}

pub mod remote_write;

#[cfg(test)]
mod tests {
    use super::v1;
    use prost::Message;

    #[test]
    fn batch_round_trips_and_keeps_stale_bits() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let batch = v1::Batch {
            sender: Some(v1::Sender {
                id: "secondary/dc1-a".into(),
                tier: "secondary".into(),
                datacenter: "dc1".into(),
                replica: "a".into(),
                epoch: 7,
            }),
            sequence: 42,
            series: vec![v1::Series {
                labels: vec![v1::Label {
                    name: "__name__".into(),
                    value: "up".into(),
                }],
                series_id: 7,
                samples: vec![
                    v1::Sample {
                        timestamp_ms: 1,
                        value: 1.0,
                    },
                    v1::Sample {
                        timestamp_ms: 2,
                        value: stale,
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = batch.encode_to_vec();
        let back = v1::Batch::decode(bytes.as_slice()).unwrap();
        // NaN != NaN, so compare the encodings and the fields around it.
        assert_eq!(back.encode_to_vec(), bytes);
        assert_eq!(back.sequence, 42);
        assert_eq!(back.sender, batch.sender);
        assert_eq!(back.series[0].labels, batch.series[0].labels);
        assert_eq!(
            back.series[0].samples[1].value.to_bits(),
            0x7ff0_0000_0000_0002
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(v1::Batch::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
