// Package ebscheduler keeps the outbox publisher's on/off state in the
// EventBridge Scheduler schedule that invokes the publisher Lambda: started
// is ENABLED, stopped is DISABLED. It is the Lambda face's httpapi.Scheduler;
// local mode keeps the state in MongoDB instead.
package ebscheduler

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/scheduler"
	"github.com/aws/aws-sdk-go-v2/service/scheduler/types"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// API is the part of the EventBridge Scheduler client this package uses.
type API interface {
	GetSchedule(ctx context.Context, in *scheduler.GetScheduleInput, opts ...func(*scheduler.Options)) (*scheduler.GetScheduleOutput, error)
	UpdateSchedule(ctx context.Context, in *scheduler.UpdateScheduleInput, opts ...func(*scheduler.Options)) (*scheduler.UpdateScheduleOutput, error)
}

var _ API = (*scheduler.Client)(nil)

// Scheduler reads and toggles one schedule.
type Scheduler struct {
	client API
	name   string
	group  string
	// cacheTTL bounds how stale the state the fast-path gate sees may be. A
	// schedule fires at most once a minute; reading it on every POST would
	// cost a round trip and a share of the API's request quota. The gate
	// also remembers a failed read for as long: while EventBridge Scheduler
	// throttles or cannot be reached, each instance (which serves one
	// request at a time) then reads at most as often as when it is healthy,
	// rather than adding a request per POST to the load that throttles it. The price is a fast path that stays off
	// up to cacheTTL after the service recovers; the messages are stored
	// all the same, for the publisher, and a successful read (an explicit
	// GET /scheduler, say) turns it back on at once.
	cacheTTL time.Duration
	now      func() time.Time

	mu       sync.Mutex
	cached   httpapi.SchedulerStatus
	cachedAt time.Time
	// failed is the error of the gate's last read if no read has succeeded
	// since, and failedAt when it failed.
	failed   error
	failedAt time.Time
}

// gateTimeout bounds the gate's read of the schedule. The gate sits in
// front of every POST /messages, and an error only means "no fast path"
// (the message is stored for the publisher), so waiting long for an answer
// costs every request more than it could save. A second leaves a healthy
// call ample time and keeps a POST's worst case short.
const gateTimeout = time.Second

// oneAttempt makes the gate's read a single attempt: the SDK's retries
// (3 attempts with backoff) cost a POST 1 to 2 s while throttled, and a
// failure is remembered for cacheTTL anyway. Status, Start and Stop
// serve a user's explicit /scheduler call and keep the SDK's retries.
func oneAttempt(o *scheduler.Options) { o.RetryMaxAttempts = 1 }

var _ httpapi.Scheduler = (*Scheduler)(nil)

// New returns a Scheduler for the schedule name in group.
func New(client API, name, group string) *Scheduler {
	return &Scheduler{client: client, name: name, group: group, cacheTTL: 5 * time.Second, now: time.Now}
}

// Status implements httpapi.Scheduler.
func (s *Scheduler) Status(ctx context.Context) (httpapi.SchedulerStatus, error) {
	out, err := s.get(ctx)
	if err != nil {
		return httpapi.SchedulerStatus{}, err
	}
	return s.remember(status(out, out.State)), nil
}

// Start implements httpapi.Scheduler: it enables the schedule.
func (s *Scheduler) Start(ctx context.Context) (httpapi.SchedulerStatus, error) {
	return s.set(ctx, types.ScheduleStateEnabled)
}

// Stop implements httpapi.Scheduler: it disables the schedule. Accepted
// messages then wait in the outbox as UNSENT.
func (s *Scheduler) Stop(ctx context.Context) (httpapi.SchedulerStatus, error) {
	return s.set(ctx, types.ScheduleStateDisabled)
}

// set changes the schedule's state. UpdateSchedule replaces the whole
// schedule, so every field GetSchedule returned is sent back unchanged.
func (s *Scheduler) set(ctx context.Context, state types.ScheduleState) (httpapi.SchedulerStatus, error) {
	out, err := s.get(ctx)
	if err != nil {
		return httpapi.SchedulerStatus{}, err
	}
	if out.State == state {
		return s.remember(status(out, state)), nil
	}
	_, err = s.client.UpdateSchedule(ctx, &scheduler.UpdateScheduleInput{
		Name:                       out.Name,
		GroupName:                  out.GroupName,
		ScheduleExpression:         out.ScheduleExpression,
		ScheduleExpressionTimezone: out.ScheduleExpressionTimezone,
		FlexibleTimeWindow:         out.FlexibleTimeWindow,
		Target:                     out.Target,
		ActionAfterCompletion:      out.ActionAfterCompletion,
		Description:                out.Description,
		StartDate:                  out.StartDate,
		EndDate:                    out.EndDate,
		KmsKeyArn:                  out.KmsKeyArn,
		State:                      state,
	})
	if err != nil {
		return httpapi.SchedulerStatus{}, fmt.Errorf("update schedule %s: %w: %w", s.name, errUnavailable, err)
	}
	st := status(out, state)
	t := s.now().UTC()
	st.UpdatedAt = &t
	return s.remember(st), nil
}

func (s *Scheduler) get(ctx context.Context, opts ...func(*scheduler.Options)) (*scheduler.GetScheduleOutput, error) {
	out, err := s.client.GetSchedule(ctx, &scheduler.GetScheduleInput{Name: aws.String(s.name), GroupName: aws.String(s.group)}, opts...)
	if err != nil {
		return nil, fmt.Errorf("get schedule %s: %w: %w", s.name, errUnavailable, err)
	}
	return out, nil
}

// errUnavailable makes a failed call to EventBridge Scheduler a 503 for the
// API's client, who may retry.
var errUnavailable = &message.Error{Code: message.EUNAVAILABLE, Message: "the publisher schedule cannot be read or changed right now"}

func (s *Scheduler) remember(st httpapi.SchedulerStatus) httpapi.SchedulerStatus {
	return s.rememberFrom(st, s.now())
}

// rememberFrom caches st as read at at: what a read brings back is as old
// as its start.
func (s *Scheduler) rememberFrom(st httpapi.SchedulerStatus, at time.Time) httpapi.SchedulerStatus {
	s.mu.Lock()
	s.cached, s.cachedAt = st, at
	s.failed, s.failedAt = nil, time.Time{}
	s.mu.Unlock()
	return st
}

// ForgetGate drops what the gate last read, and a failed read it
// remembers, so that its next call reads the schedule. The publisher
// function calls it at each invocation: being invoked says the schedule is
// enabled, newer news than a "disabled" the previous run may have cached
// seconds before.
func (s *Scheduler) ForgetGate() {
	s.mu.Lock()
	s.cachedAt = time.Time{}
	s.failed, s.failedAt = nil, time.Time{}
	s.mu.Unlock()
}

// Gate returns the outbox gate of the API's fast path: open while the
// schedule is enabled, as last read at most cacheTTL ago. It fails fast:
// a read gets one attempt and gateTimeout, and a failed read is returned
// again, without a call, to every gate call for cacheTTL, unless a read
// succeeds meanwhile.
func (s *Scheduler) Gate() outbox.Gate {
	return func(ctx context.Context) (bool, error) {
		s.mu.Lock()
		now := s.now()
		fresh := !s.cachedAt.IsZero() && now.Sub(s.cachedAt) < s.cacheTTL
		st := s.cached
		failed, failedAt := s.failed, s.failedAt
		s.mu.Unlock()
		if fresh {
			return st.State == message.SchedulerStarted, nil
		}
		if failed != nil && now.Sub(failedAt) < s.cacheTTL {
			return false, fmt.Errorf("schedule read failed %s ago: %w", now.Sub(failedAt).Round(time.Millisecond), failed)
		}
		st, err := s.gateRead(ctx)
		if err != nil {
			return false, err
		}
		return st.State == message.SchedulerStarted, nil
	}
}

// gateRead reads the schedule for the gate and remembers the outcome.
func (s *Scheduler) gateRead(ctx context.Context) (httpapi.SchedulerStatus, error) {
	rctx, cancel := context.WithTimeout(ctx, gateTimeout)
	defer cancel()
	began := s.now()
	out, err := s.get(rctx, oneAttempt)
	if err != nil {
		// A caller that gave up (its client went away, its deadline
		// passed) says nothing about EventBridge Scheduler: other
		// callers must not inherit its failure.
		if ctx.Err() == nil {
			s.mu.Lock()
			s.failed, s.failedAt = err, s.now()
			s.mu.Unlock()
		}
		return httpapi.SchedulerStatus{}, err
	}
	return s.rememberFrom(status(out, out.State), began), nil
}

func status(out *scheduler.GetScheduleOutput, state types.ScheduleState) httpapi.SchedulerStatus {
	st := httpapi.SchedulerStatus{State: message.SchedulerStopped, Backend: "eventbridge-scheduler", Schedule: aws.ToString(out.Name)}
	if state == types.ScheduleStateEnabled {
		st.State = message.SchedulerStarted
	}
	if out.LastModificationDate != nil {
		t := out.LastModificationDate.UTC()
		st.UpdatedAt = &t
	}
	return st
}

// NewFromEnvironment builds the client from the variables the Lambda
// runtime sets (AWS_REGION and the execution role's AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN; AWS_ENDPOINT_URL_SCHEDULER,
// if set, points it elsewhere, as the tests do) and returns a Scheduler for
// name in group. It reads them itself rather than through
// aws-sdk-go-v2/config, whose SSO, STS and IMDS providers would add about
// 3 MB to the bootstrap for nothing a Lambda function uses.
func NewFromEnvironment(getenv func(string) string, name, group string) (*Scheduler, error) {
	region := getenv("AWS_REGION")
	if region == "" {
		return nil, fmt.Errorf("AWS_REGION: not set")
	}
	key, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY")
	if key == "" || secret == "" {
		return nil, fmt.Errorf("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: not set")
	}
	cfg := aws.Config{
		Region:      region,
		Credentials: aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(key, secret, getenv("AWS_SESSION_TOKEN"))),
	}
	client := scheduler.NewFromConfig(cfg, func(o *scheduler.Options) {
		if ep := getenv("AWS_ENDPOINT_URL_SCHEDULER"); ep != "" {
			o.BaseEndpoint = aws.String(ep)
		}
	})
	return New(client, name, group), nil
}
