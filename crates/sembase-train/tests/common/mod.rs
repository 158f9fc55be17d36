//! Observers and checks the training tests share.

use std::path::Path;

use sembase_train::{
    BiEncoderConfig, BiEncoderTraining, Example, Finish, LoopConfig, ModelCard, Objective,
    TrainObserver, TrainableModel, Trainer,
};

/// Watches nothing.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// Stops the run after `at` steps, as Ctrl-C would.
#[allow(dead_code)] // each test file compiles this module; not all of them interrupt runs
pub struct StopAt(pub usize, pub std::cell::Cell<usize>);
impl TrainObserver for StopAt {
    fn on_step(&self, step: usize, _: usize, _: f32) {
        self.1.set(step);
    }
    fn interrupted(&self) -> bool {
        self.1.get() >= self.0
    }
}

/// Every variable's values by name.
#[allow(dead_code)]
pub fn weights(model: &TrainableModel) -> Vec<(String, Vec<f32>)> {
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// A run on pairs stopped after 3 steps and resumed from its checkpoint ends with the
/// loss curve and weights of an uninterrupted run (`load` gives a fresh model each time).
#[allow(dead_code)]
pub fn assert_resumes_exactly(
    tmp: &Path,
    load: impl Fn() -> TrainableModel,
    examples: &[Example],
    config: LoopConfig,
) {
    fn trainee<'a>(model: &'a TrainableModel, examples: &[Example]) -> BiEncoderTraining<'a> {
        let bi = BiEncoderConfig::new(Objective::Pairs);
        BiEncoderTraining::new(model, bi, examples.to_vec(), ModelCard::default()).unwrap()
    }
    let straight = {
        let model = load();
        let pairs = trainee(&model, examples);
        let mut t = Trainer::new(&pairs, config.clone(), &tmp.join("a")).unwrap();
        t.run(&Quiet).unwrap();
        (t.state.loss.clone(), weights(&model))
    };
    let out = tmp.join("b");
    let checkpoint = {
        let model = load();
        let pairs = trainee(&model, examples);
        let mut t = Trainer::new(&pairs, config.clone(), &out).unwrap();
        match t.run(&StopAt(3, Default::default())).unwrap() {
            Finish::Interrupted { checkpoint } => checkpoint,
            other => panic!("expected an interruption, got {other:?}"),
        }
    };
    let model = load();
    let pairs = trainee(&model, examples);
    let mut t = Trainer::new(&pairs, config, &out).unwrap();
    t.resume(&checkpoint).unwrap();
    assert_eq!(t.state.step, 3);
    t.run(&Quiet).unwrap();
    assert_eq!(t.state.loss, straight.0, "loss curves differ after resume");
    assert_eq!(weights(&model), straight.1, "weights differ after resume");
}

/// Two steps on pairs give the same losses and weights with the whole batch in one
/// pass and with cached negatives over mini-batches of one text.
#[allow(dead_code)]
pub fn assert_cached_negatives_match(
    tmp: &Path,
    load: impl Fn() -> TrainableModel,
    examples: &[Example],
    config: LoopConfig,
) {
    let run = |mini_batch: Option<usize>| {
        let model = load();
        let bi = BiEncoderConfig { mini_batch, ..BiEncoderConfig::new(Objective::Pairs) };
        let pairs =
            BiEncoderTraining::new(&model, bi, examples.to_vec(), ModelCard::default()).unwrap();
        let cfg = LoopConfig { max_steps: Some(2), ..config.clone() };
        let mut trainer = Trainer::new(&pairs, cfg, &tmp.join("o")).unwrap();
        trainer.run(&Quiet).unwrap();
        (trainer.state.loss.clone(), weights(&model))
    };
    let (loss_full, w_full) = run(None);
    let (loss_cached, w_cached) = run(Some(1));
    for ((_, a), (_, b)) in loss_full.iter().zip(&loss_cached) {
        assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
    }
    for ((name, a), (_, b)) in w_full.iter().zip(&w_cached) {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{name} differs by {worst}");
    }
}
