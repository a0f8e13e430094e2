set -e
cd /tmp/qs && source .venv/bin/activate
D=runs/quickstart/data
t0=$(date +%s)
python -m fbcompress train-teacher -r quickstart --data $D --out /tmp/exp/teacher1000 --set train.steps=1000 > /tmp/exp/teacher.log 2>&1
t1=$(date +%s); echo "teacher1000 $((t1-t0)) s" >> /tmp/exp/times.txt
python -m fbcompress eval --model /tmp/exp/teacher1000 --data $D --json /tmp/exp/teacher1000-eval.json > /tmp/exp/teacher-eval.log 2>&1
t2=$(date +%s); echo "teacher-eval $((t2-t1)) s" >> /tmp/exp/times.txt
python -m fbcompress distill -r quickstart --teacher /tmp/exp/teacher1000 --data $D --out /tmp/exp/student --set distill.hidden_size=128 --set distill.num_heads=4 --set distill.intermediate_size=512 > /tmp/exp/distill.log 2>&1
t3=$(date +%s); echo "distill $((t3-t2)) s" >> /tmp/exp/times.txt
python -m fbcompress eval --model /tmp/exp/student --data $D --json /tmp/exp/student-eval.json > /tmp/exp/student-eval.log 2>&1
t4=$(date +%s); echo "student-eval $((t4-t3)) s" >> /tmp/exp/times.txt
