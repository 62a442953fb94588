//! TEMPORARY stub, replaced by the real scorers.
use crate::observe::Observation;
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub lexical: f64,
    pub structure: f64,
    pub length: f64,
    pub refusal: f64,
}
pub const SCORERS: [&str; 6] = [
    "lexical",
    "structure",
    "length",
    "refusal",
    "finish",
    "combined",
];
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HardFailure {
    Error,
    Empty,
    BrokenJson,
    BrokenToolCall,
    Refusal,
}
impl HardFailure {
    pub fn as_str(self) -> &'static str {
        "error"
    }
}
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub lexical: f64,
    pub structure: f64,
    pub length: f64,
    pub refusal: f64,
    pub finish: f64,
    pub combined: f64,
    pub hard_failure: Option<HardFailure>,
}
impl Score {
    pub fn by_scorer(&self) -> [(&'static str, f64); 6] {
        [
            ("lexical", self.lexical),
            ("structure", self.structure),
            ("length", self.length),
            ("refusal", self.refusal),
            ("finish", self.finish),
            ("combined", self.combined),
        ]
    }
}
pub fn score(reference: &Observation, subject: &Observation, _w: &Weights) -> Option<Score> {
    let s = if reference.text == subject.text {
        1.0
    } else {
        0.0
    };
    Some(Score {
        lexical: s,
        structure: 1.0,
        length: 1.0,
        refusal: 1.0,
        finish: 1.0,
        combined: s,
        hard_failure: None,
    })
}
