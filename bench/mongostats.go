package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// commandCounts are the embedded MongoDB's counts of the commands it has
// served, by name (serverStatus metrics.commands, which FerretDB keeps).
type commandCounts map[string]struct{ total, failed int64 }

// mongoCommands reads the command counts of the server at uri.
func mongoCommands(ctx context.Context, uri string) (commandCounts, error) {
	c, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(2 * time.Second))
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Disconnect(context.WithoutCancel(ctx)) }()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var res struct {
		Metrics struct {
			Commands map[string]struct {
				Total  int64 `bson:"total"`
				Failed int64 `bson:"failed"`
			} `bson:"commands"`
		} `bson:"metrics"`
	}
	if err := c.Database("admin").RunCommand(ctx, bson.D{{Key: "serverStatus", Value: 1}}).Decode(&res); err != nil {
		return nil, fmt.Errorf("serverStatus: %w", err)
	}
	out := commandCounts{}
	for name, v := range res.Metrics.Commands {
		out[name] = struct{ total, failed int64 }{v.Total, v.Failed}
	}
	return out, nil
}

// sampleCommands reads the counts, or nil if the server does not keep them.
func (b *bench) sampleCommands(ctx context.Context) commandCounts {
	c, err := mongoCommands(ctx, b.stack.mongoURI)
	if err != nil {
		b.logf("mongodb command counts: %v", err)
		return nil
	}
	return c
}

// reportCommands records the MongoDB commands the system sent per message
// in a phase: the clearest view of what each message costs the database.
func (b *bench) reportCommands(prefix string, before, after commandCounts, msgs int) {
	if before == nil || after == nil || msgs == 0 {
		b.rep.set(prefix+"mongodb_cmds_per_msg", nil)
		b.rep.set(prefix+"mongodb_write_cmds_per_msg", nil)
		return
	}
	type cmd struct {
		name          string
		total, failed int64
	}
	var cmds []cmd
	var total, failed int64
	for name, a := range after {
		z := before[name]
		d := cmd{name, a.total - z.total, a.failed - z.failed}
		// The bench's own connection handshakes and serverStatus calls
		// are not the system's.
		if d.total <= 0 || name == "serverStatus" || name == "hello" || name == "isMaster" || name == "ismaster" || name == "endSessions" {
			continue
		}
		cmds = append(cmds, d)
		total += d.total
		failed += d.failed
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].total > cmds[j].total })
	r := b.rep
	per := func(n int64) float64 { return float64(n) / float64(msgs) }
	r.set(prefix+"mongodb_cmds_per_msg", per(total))
	r.set(prefix+"mongodb_cmds_failed", failed)
	var parts []string
	for _, c := range cmds {
		r.set(prefix+"mongodb_cmds_per_msg_"+c.name, per(c.total))
		s := fmt.Sprintf("%s %.2f", c.name, per(c.total))
		if c.failed > 0 {
			s += fmt.Sprintf(" (%d failed)", c.failed)
		}
		parts = append(parts, s)
	}
	r.line("MongoDB commands per accepted message", fmt.Sprintf("%.2f: %s", per(total), strings.Join(parts, ", ")))
	var writes int64
	for _, c := range cmds {
		if writeCommands[c.name] {
			writes += c.total
		}
	}
	r.set(prefix+"mongodb_write_cmds_per_msg", per(writes))
	if prefix == "" {
		r.check("MongoDB write commands per accepted message (grouped)", fmt.Sprintf("%.2f", per(writes)), "<= 2", per(writes) <= targetWrites)
	}
}

// writeCommands are the commands that write. A grouped write (insertMany,
// a bulkWrite's updates or deletes) is one command for many messages.
var writeCommands = map[string]bool{"insert": true, "update": true, "delete": true, "findAndModify": true}

// targetWrites is the issue's "at most two database writes per message on
// the hot path, amortised by grouping".
const targetWrites = 2
