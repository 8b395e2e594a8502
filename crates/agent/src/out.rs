//! Collects families as collectors produce them.

use std::collections::HashMap;

use tiermon_exposition::{FamilySample, MetricFamily, MetricType};

/// The families of one scrape, in the order first produced.
#[derive(Debug, Default)]
pub(crate) struct Out {
    fams: Vec<MetricFamily>,
    idx: HashMap<String, usize>,
}

impl Out {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        let i = match self.idx.get(name) {
            Some(&i) => i,
            None => {
                self.fams.push(MetricFamily {
                    name: name.to_owned(),
                    help: Some(help.to_owned()),
                    unit: None,
                    kind,
                    samples: Vec::new(),
                });
                self.idx.insert(name.to_owned(), self.fams.len() - 1);
                self.fams.len() - 1
            }
        };
        &mut self.fams[i]
    }

    fn push(
        &mut self,
        name: &str,
        sample: &str,
        help: &str,
        kind: MetricType,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let f = self.family(name, help, kind);
        f.samples.push(FamilySample {
            name: sample.to_owned(),
            labels: labels
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            value,
            timestamp: None,
            exemplar: None,
        });
    }

    /// A gauge sample.
    pub(crate) fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, name, help, MetricType::Gauge, labels, value);
    }

    /// A counter sample; `name` ends in `_total`, as exposed.
    pub(crate) fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let family = name.strip_suffix("_total").unwrap_or(name);
        self.push(family, name, help, MetricType::Counter, labels, value);
    }

    /// Appends everything another collector produced.
    pub(crate) fn merge(&mut self, other: Out) {
        for f in other.fams {
            let kind = f.kind;
            let help = f.help.clone().unwrap_or_default();
            let name = f.name.clone();
            self.family(&name, &help, kind).samples.extend(f.samples);
        }
    }

    pub(crate) fn into_families(self) -> Vec<MetricFamily> {
        self.fams
    }
}
