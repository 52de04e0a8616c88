package groupcommit_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/groupcommit"
)

func TestGroupBatchesConcurrentCallsAndKeepsResultsApart(t *testing.T) {
	var batches, items, inFlight, maxInFlight atomic.Int64
	g := &groupcommit.Group[int]{
		MaxBatch:    10,
		MaxInFlight: 2,
		Flush: func(ctx context.Context, xs []int) []error {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for {
				m := maxInFlight.Load()
				if n <= m || maxInFlight.CompareAndSwap(m, n) {
					break
				}
			}
			if len(xs) > 10 {
				t.Errorf("batch of %d, want at most 10", len(xs))
			}
			batches.Add(1)
			items.Add(int64(len(xs)))
			time.Sleep(2 * time.Millisecond) // a write takes time
			errs := make([]error, len(xs))
			for i, x := range xs {
				if x%7 == 0 {
					errs[i] = fmt.Errorf("item %d failed", x)
				}
			}
			return errs
		},
	}
	const n = 400
	var wg sync.WaitGroup
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := g.Do(context.Background(), i)
			if (i%7 == 0) != (err != nil) {
				t.Errorf("item %d: err %v", i, err)
			}
			if err != nil && err.Error() != fmt.Sprintf("item %d failed", i) {
				t.Errorf("item %d got another item's error: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if items.Load() != n {
		t.Fatalf("flushed %d items, want %d", items.Load(), n)
	}
	if batches.Load() >= n/2 {
		t.Errorf("%d batches for %d concurrent calls: not grouping", batches.Load(), n)
	}
	if maxInFlight.Load() > 2 {
		t.Errorf("%d flushes at once, want at most 2", maxInFlight.Load())
	}
	// Every flusher gave its slot back: a lone call is written at once.
	start := time.Now()
	if err := g.Do(context.Background(), 1); err != nil || time.Since(start) > time.Second {
		t.Fatalf("lone call after the burst: %v after %s", err, time.Since(start))
	}
}

func TestGroupSkipsCallsWhoseContextEnded(t *testing.T) {
	release := make(chan struct{})
	var flushed sync.Map
	entered := make(chan struct{})
	g := &groupcommit.Group[string]{Flush: func(ctx context.Context, xs []string) []error {
		for _, x := range xs {
			flushed.Store(x, true)
		}
		if xs[0] == "first" {
			close(entered)
			<-release
		}
		return nil
	}}
	done := make(chan error)
	go func() { done <- g.Do(context.Background(), "first") }()
	<-entered // "first" is being written
	ctx, cancel := context.WithCancel(context.Background())
	late := make(chan error)
	go func() { late <- g.Do(ctx, "cancelled") }()
	waitPending(t, g, 1)
	cancel()
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-late; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v, want context.Canceled", err)
	}
	if _, ok := flushed.Load("cancelled"); ok {
		t.Fatal("a call whose context ended before its batch was written anyway")
	}
}

func TestEachAndNilMeanAllSucceeded(t *testing.T) {
	g := &groupcommit.Group[int]{Flush: func(context.Context, []int) []error { return nil }}
	if err := g.Do(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	g.Flush = func(_ context.Context, xs []int) []error { return groupcommit.Each(len(xs), boom) }
	if err := g.Do(context.Background(), 1); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
}

func TestGroupSurvivesAPanickingOrShortFlush(t *testing.T) {
	g := &groupcommit.Group[int]{Flush: func(_ context.Context, xs []int) []error {
		if xs[0] == 1 {
			panic("boom")
		}
		return []error{nil} // one result, whatever the batch
	}}
	if err := g.Do(context.Background(), 1); err == nil {
		t.Fatal("a panicking flush reported success")
	}
	// The flush slot was given back: the group still works.
	if err := g.Do(context.Background(), 2); err != nil {
		t.Fatalf("after the panic: %v", err)
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	block := make(chan struct{})
	entered := make(chan struct{})
	g.Flush = func(_ context.Context, xs []int) []error {
		if xs[0] == 0 {
			close(entered)
			<-block
		}
		return []error{nil}
	}
	wg.Go(func() { _ = g.Do(context.Background(), 0) })
	<-entered
	for i := 3; i < 6; i++ {
		wg.Go(func() {
			if g.Do(context.Background(), i) != nil {
				failed.Add(1)
			}
		})
	}
	waitPending(t, g, 3) // one batch of 3 once the flush is free
	close(block)
	wg.Wait()
	if failed.Load() != 3 {
		t.Fatalf("%d of a batch of 3 given one result failed, want all 3", failed.Load())
	}
}

func TestGroupCallerGivesUpWhileQueued(t *testing.T) {
	var flushed sync.Map
	g, release := heldGroup(0, func(xs []string) {
		for _, x := range xs {
			flushed.Store(x, true)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := g.Do(ctx, "gave up"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued call: %v", err)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Fatalf("a queued call waited %s for a flush it was not part of", waited)
	}
	close(release)
	if err := g.Do(context.Background(), "after"); err != nil {
		t.Fatal(err)
	}
	if _, ok := flushed.Load("gave up"); ok {
		t.Fatal("a call whose caller gave up was written")
	}
}

// heldGroup returns a group whose flushes tell record their batch, with a
// call "first" in a flush that holds until release is closed.
func heldGroup(maxBatch int, record func([]string)) (g *groupcommit.Group[string], release chan struct{}) {
	release = make(chan struct{})
	entered := make(chan struct{})
	g = &groupcommit.Group[string]{MaxBatch: maxBatch, Flush: func(_ context.Context, xs []string) []error {
		record(xs)
		if xs[0] == "first" {
			close(entered)
			<-release
		}
		return nil
	}}
	go func() { _ = g.Do(context.Background(), "first") }()
	<-entered
	return g, release
}

// waitPending waits until n calls wait for a batch of g.
func waitPending[T any](t *testing.T, g *groupcommit.Group[T], n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); groupcommit.Pending(g) != n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls pending, want %d", groupcommit.Pending(g), n)
		}
	}
}

// TestGroupAbandonedCallsDoNotFillBatches: calls whose callers gave up
// while a slow flush ran are dropped as the next batch is gathered, and do
// not take the places of live calls queued among them.
func TestGroupAbandonedCallsDoNotFillBatches(t *testing.T) {
	var mu sync.Mutex
	var batches [][]string
	g, release := heldGroup(2, func(xs []string) {
		mu.Lock()
		batches = append(batches, slices.Clone(xs))
		mu.Unlock()
	})
	var live sync.WaitGroup
	for i := range 3 {
		// A caller that gives up, then one that waits, and so on.
		ctx, cancel := context.WithCancel(context.Background())
		gaveUp := make(chan error)
		go func() { gaveUp <- g.Do(ctx, fmt.Sprint("gave up ", i)) }()
		waitPending(t, g, 2*i+1)
		live.Go(func() {
			if err := g.Do(context.Background(), fmt.Sprint("live ", i)); err != nil {
				t.Errorf("live call: %v", err)
			}
		})
		waitPending(t, g, 2*i+2)
		cancel()
		if err := <-gaveUp; !errors.Is(err, context.Canceled) {
			t.Fatalf("call given up: %v", err)
		}
	}
	close(release)
	live.Wait()
	mu.Lock()
	defer mu.Unlock()
	want := [][]string{{"first"}, {"live 0", "live 1"}, {"live 2"}}
	if !reflect.DeepEqual(batches, want) {
		t.Fatalf("batches %q, want %q", batches, want)
	}
	if n := groupcommit.Pending(g); n != 0 {
		t.Fatalf("%d calls left pending", n)
	}
}
