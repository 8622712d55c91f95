// CostPredictor (online least squares with a fading prior) and FakeClock.
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "batching/clock.h"
#include "batching/cost_predictor.h"

namespace topserve::batching {
namespace {

TEST(CostPredictor, AnswersThePriorBeforeAnyMeasurement) {
  CostPredictor p({.prior_overhead_seconds = 0.001, .prior_seconds_per_unit = 0.002});
  EXPECT_DOUBLE_EQ(p.PredictSeconds(0), 0.001);
  EXPECT_DOUBLE_EQ(p.PredictSeconds(10), 0.021);
  EXPECT_EQ(p.num_observations(), 0);
}

TEST(CostPredictor, LearnsAnAffineModelFromMeasurements) {
  CostPredictor p({.prior_overhead_seconds = 0.5, .prior_seconds_per_unit = 0.1});
  for (int i = 0; i < 300; ++i) {
    const double x = 100 + (i * 7919) % 5000;
    p.Observe(x, 0.003 + 2e-6 * x);
  }
  EXPECT_NEAR(p.overhead_seconds(), 0.003, 1e-5);
  EXPECT_NEAR(p.seconds_per_unit(), 2e-6, 1e-8);
}

TEST(CostPredictor, TracksAChangeInSpeed) {
  CostPredictor p;
  for (int i = 0; i < 200; ++i) p.Observe(1000 + i % 10 * 100, 0.01 + 1e-5 * (1000 + i % 10 * 100));
  for (int i = 0; i < 300; ++i) p.Observe(1000 + i % 10 * 100, 0.02 + 2e-5 * (1000 + i % 10 * 100));
  EXPECT_NEAR(p.PredictSeconds(1500), 0.02 + 2e-5 * 1500, 0.001);
}

TEST(CostPredictor, SameSizedBatchesPredictThatSizeAndKeepThePriorShape) {
  CostPredictor p({.prior_overhead_seconds = 0.01, .prior_seconds_per_unit = 0.001});
  for (int i = 0; i < 500; ++i) p.Observe(800, 0.081);  // The prior says 0.81: 10x too slow.
  EXPECT_NEAR(p.PredictSeconds(800), 0.081, 1e-9);
  EXPECT_NEAR(p.seconds_per_unit(), 0.0001, 1e-9);  // The prior's slope, rescaled.
}

TEST(CostPredictor, OneMeasurementRescalesThePrior) {
  CostPredictor p({.prior_overhead_seconds = 0, .prior_seconds_per_unit = 0.001});
  p.Observe(100, 0.5);  // 5x the prior.
  EXPECT_NEAR(p.PredictSeconds(100), 0.5, 1e-12);
  EXPECT_NEAR(p.PredictSeconds(200), 1.0, 1e-9);
}

TEST(CostPredictor, IgnoresInvalidMeasurementsAndNeverGoesNegative) {
  CostPredictor p({.prior_overhead_seconds = 0.001, .prior_seconds_per_unit = 0.002});
  p.Observe(-1, 1);
  p.Observe(1, std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(p.num_observations(), 0);
  for (int i = 0; i < 100; ++i) p.Observe(i, 1.0 - 0.001 * i);  // Decreasing: noise.
  EXPECT_GE(p.seconds_per_unit(), 0);
  EXPECT_GE(p.overhead_seconds(), 0);
}

TEST(CostPredictor, ValidatesOptions) {
  EXPECT_TRUE(ValidateCostPredictorOptions({}).ok());
  EXPECT_FALSE(ValidateCostPredictorOptions({.prior_seconds_per_unit = 0}).ok());
  EXPECT_FALSE(ValidateCostPredictorOptions({.prior_reference_units = 0}).ok());
  EXPECT_FALSE(ValidateCostPredictorOptions({.forgetting_factor = 1.5}).ok());
}

TEST(FakeClock, AdvanceWakesAWaiterPastItsDeadline) {
  FakeClock clock;
  std::mutex mu;
  std::condition_variable cv;
  const Clock::ListenerId id = clock.AddListener([&] {
    std::lock_guard<std::mutex> lock(mu);
    cv.notify_all();
  });
  const absl::Time deadline = clock.Now() + absl::Seconds(5);
  bool woke = false;
  std::thread waiter([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (clock.Now() < deadline) clock.WaitUntil(lock, cv, deadline);
    woke = true;
  });
  clock.Advance(absl::Seconds(2));
  clock.Advance(absl::Seconds(3));
  waiter.join();
  EXPECT_TRUE(woke);
  clock.Advance(-absl::Seconds(1));  // Ignored.
  EXPECT_EQ(clock.Now(), deadline);
  clock.RemoveListener(id);
}

TEST(RealClock, WaitUntilReturnsAtTheDeadline) {
  std::mutex mu;
  std::condition_variable cv;
  RealClock* clock = RealClock::Get();
  const absl::Time deadline = clock->Now() + absl::Milliseconds(5);
  std::unique_lock<std::mutex> lock(mu);
  while (clock->Now() < deadline) clock->WaitUntil(lock, cv, deadline);
  EXPECT_GE(clock->Now(), deadline);
}

}  // namespace
}  // namespace topserve::batching
